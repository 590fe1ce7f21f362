#!/usr/bin/env python3
"""Writes the golden scenario folders: events.jsonl and expected.jsonl.

Each shipped rule has an `<rule>` folder where an attack makes it fire and a
`<rule>-legit` folder of look-alike honest traffic that must stay quiet.
expected.jsonl states what must fire, written by hand here, never copied from
kamiguard's output. Run it again after editing: `python3 tests/scenarios/make_scenarios.py`.
Networks: see src/demo/geo.rs (175.16.199/24 Beijing, 100.64/16 Guangzhou
carrier NAT, 198.51.100/24 Tokyo, 203.0.113/24 New York, 192.0.2/24 hosting,
198.18.0/24 VPN).
"""
import datetime as dt
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
OLD = "2024-01-01T00:00:00+08:00"


def ts(seconds):
    return (T0 + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def code(name):
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def ev(eid, t, account, outcome="success", kind="redemption", card=None, ip=None, device=None,
       face=None, card_type=None, created=OLD, verified=True, country="CN", platform="android",
       channel="app", bound=None):
    e = {"event_id": eid, "ts": ts(t), "kind": kind, "outcome": outcome,
         "card": {"code_hash": code(card or eid), "brand": "xiaomi"},
         "account": {"id": account, "created_at": created, "verified": verified, "country": country},
         "channel": channel}
    if face is not None:
        e["card"]["face_value"] = face
    if card_type:
        e["card"]["type"] = card_type
    if bound:
        e["card"]["bound_account"] = bound
    if device:
        e["device"] = {"fingerprint": device, "platform": platform}
    if ip:
        e["ip"] = ip
    return e


def write(name, events, expected):
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "events.jsonl"), "w") as f:
        for e in events:
            f.write(json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n")
    with open(os.path.join(d, "expected.jsonl"), "w") as f:
        for x in expected:
            f.write(json.dumps(x, separators=(",", ":")) + "\n")


def days_ago(n):
    return (T0 - dt.timedelta(days=n)).isoformat(timespec="seconds")


# single-address guessing: 60 wrong codes from one address in 5 minutes.
write("single-ip-guessing",
      [ev(f"g-{i:03}", i * 5, "u-guess", "invalid_code", ip="175.16.199.7", device="fp-bot-1") for i in range(60)],
      [{"rule": "single-ip-guessing", "action": "block", "scope": "ip", "subject": "175.16.199.7",
        "trigger_event_id": "g-049", "evidence": {"value": 50, "threshold": 50}},
       # The guessing account itself, at its fifth made-up code.
       {"rule": "account-guessing", "action": "challenge", "scope": "account", "subject": "u-guess",
        "trigger_event_id": "g-004"}])

# carrier NAT: 300 honest accounts behind one address, one in ten mistypes once.
nat = []
for i in range(300):
    t = i * 2
    if i % 10 == 0:
        nat.append(ev(f"n-{i:03}-typo", t, f"u-nat-{i}", "invalid_code", ip="100.64.0.9", device=f"fp-nat-{i}", card=f"typo-{i}"))
    nat.append(ev(f"n-{i:03}", t + 1, f"u-nat-{i}", ip="100.64.0.9", device=f"fp-nat-{i}", face=5000, card_type="e_card"))
write("single-ip-guessing-legit", nat, [])

# distributed guessing: one device, a new proxy address per failure.
write("distributed-guessing",
      [ev(f"d-{i:02}", i * 60, "u-rot", "invalid_code", ip=f"175.16.199.{10 + i}", device="fp-rot-1") for i in range(12)],
      [{"rule": "distributed-guessing", "action": "block", "scope": "device", "subject": "fp-rot-1",
        "trigger_event_id": "d-07"},
       {"rule": "account-guessing", "action": "challenge", "scope": "account", "subject": "u-rot",
        "trigger_event_id": "d-04"}])

# a commuter's phone on three addresses with a few typos.
commute = []
for i, ip in enumerate(["175.16.199.30", "175.16.199.31", "175.16.199.32"]):
    commute.append(ev(f"c-{i}-typo", i * 1200, "u-commute", "wrong_pin", ip=ip, device="fp-commute", card=f"ct-{i}"))
    commute.append(ev(f"c-{i}", i * 1200 + 30, "u-commute", ip=ip, device="fp-commute", face=10000))
commute.append(ev("c-3-typo", 3000, "u-commute", "invalid_code", ip="175.16.199.30", device="fp-commute", card="ct-3"))
write("distributed-guessing-legit", commute, [])

# one code tried by four accounts.
write("code-shared-by-accounts",
      [ev(f"s-{i}", i * 300, f"u-share-{i}", "wrong_pin" if i else "success", card="leaked", ip=f"175.16.199.{60 + i}", device=f"fp-share-{i}") for i in range(4)],
      [{"rule": "code-shared-by-accounts", "action": "freeze", "scope": "card", "subject": code("leaked"),
        "trigger_event_id": "s-2"}])

# a gift: the friend redeems it, the giver later finds it used.
write("code-shared-by-accounts-legit",
      [ev("gift-1", 0, "u-friend", card="gift", ip="175.16.199.70", device="fp-friend", face=20000),
       ev("gift-2", 3600, "u-giver", "already_used", card="gift", ip="175.16.199.71", device="fp-giver")],
      [])

# device farm: six fresh accounts on one phone.
write("device-farm",
      [ev(f"f-{i}", i * 600, f"u-farm-{i}", created=days_ago(1), ip="175.16.199.50", device="fp-farm-1", face=2000) for i in range(6)],
      [{"rule": "device-farm", "action": "block", "scope": "device", "subject": "fp-farm-1", "trigger_event_id": "f-4"}])

# a store terminal serving thirty new customers, and a family tablet.
pos = [ev(f"p-{i:02}", i * 120, f"u-shop-{i}", created=days_ago(2), ip="175.16.199.90", device="fp-pos-1",
          platform="pos", channel="store", face=5000) for i in range(30)]
pos += [ev(f"fam-{i}", 4000 + i * 60, f"u-family-{i}", created=days_ago(3), ip="175.16.199.91", device="fp-family-tablet", face=5000) for i in range(3)]
write("device-farm-legit", pos, [])

# bulk drain: eight ¥3,000 cards in half an hour; the fourth is one too many.
write("bulk-drain",
      [ev(f"b-{i}", i * 240, "u-drain", ip="175.16.199.100", device="fp-drain", face=300000, card_type="e_card") for i in range(8)],
      [{"rule": "bulk-drain", "action": "challenge", "scope": "account", "subject": "u-drain", "trigger_event_id": "b-3"}])

# a company's HR account redeeming sixty ¥500 staff cards: review, nothing
# stronger; and a long-standing customer redeeming one ¥20,000 card with a
# few small ones: one card is not a drain.
write("bulk-drain-legit",
      [ev(f"hr-{i:02}", i * 50, "u-corp-hr", ip="175.16.199.110", device="fp-hr", face=50000, card_type="custom") for i in range(60)]
      + [ev("loyal-big", 100, "u-loyal", ip="175.16.199.111", device="fp-loyal", face=2000000, card_type="e_card")]
      + [ev(f"loyal-{i}", 200 + i * 300, "u-loyal", ip="175.16.199.111", device="fp-loyal", face=100000, card_type="e_card") for i in range(2)],
      [{"rule": "corporate-bulk-review", "action": "review", "scope": "account", "subject": "u-corp-hr", "trigger_event_id": "hr-39"}])

# per-account quota: twelve redemptions in eleven minutes. The burst of ten
# passes, one cell comes back after six minutes (q-10), the twelfth is over.
write("redemption-quota",
      [ev(f"q-{i:02}", i * 60, "u-quota", ip="175.16.199.120", device="fp-quota", face=1000) for i in range(12)],
      [{"rule": "redemption-quota", "action": "challenge", "scope": "account", "subject": "u-quota", "trigger_event_id": "q-11"}])

# five redemptions in an hour, then five more the next day.
write("redemption-quota-legit",
      [ev(f"ql-{i}", i * 720, "u-regular", ip="175.16.199.121", device="fp-regular", face=1000) for i in range(5)]
      + [ev(f"ql-next-{i}", 86400 + i * 60, "u-regular", ip="175.16.199.121", device="fp-regular", face=1000) for i in range(5)],
      [])

# transfer after activation: seen activating, then someone else redeems; and a
# card the service reports as bound to another account.
write("transfer-after-activation",
      [ev("t-1", 0, "u-owner", kind="activation", card="resold", ip="175.16.199.130", device="fp-owner", face=50000),
       ev("t-2", 600, "u-buyer", card="resold", ip="175.16.199.131", device="fp-buyer", face=50000),
       ev("t-3", 900, "u-buyer", card="bound-elsewhere", bound="u-owner-2", ip="175.16.199.131", device="fp-buyer", face=50000)],
      [{"rule": "transfer-after-activation", "action": "freeze", "scope": "card", "subject": code("resold"), "trigger_event_id": "t-2"},
       {"rule": "transfer-after-activation", "action": "freeze", "scope": "card", "subject": code("bound-elsewhere"), "trigger_event_id": "t-3"}])

# the owner activates and redeems their own card.
write("transfer-after-activation-legit",
      [ev("tl-1", 0, "u-keeper", kind="activation", card="mine", ip="175.16.199.140", device="fp-keeper", face=50000),
       ev("tl-2", 600, "u-keeper", card="mine", ip="175.16.199.140", device="fp-keeper", face=50000),
       ev("tl-3", 900, "u-keeper", card="mine-too", bound="u-keeper", ip="175.16.199.140", device="fp-keeper", face=50000)],
      [])

# a day-old unverified account redeeming ¥2,000.
write("new-account-high-value",
      [ev("nv-1", 0, "u-fresh", created=days_ago(1), verified=False, ip="175.16.199.150", device="fp-fresh", face=200000)],
      [{"rule": "new-account-high-value", "action": "challenge", "scope": "account", "subject": "u-fresh", "trigger_event_id": "nv-1"}])

# new but verified; old and unverified; new, unverified, small.
write("new-account-high-value-legit",
      [ev("nvl-1", 0, "u-fresh-verified", created=days_ago(1), verified=True, ip="175.16.199.151", device="fp-nvl-1", face=200000),
       ev("nvl-2", 60, "u-old-unverified", created=days_ago(400), verified=False, ip="175.16.199.152", device="fp-nvl-2", face=200000),
       ev("nvl-3", 120, "u-fresh-small", created=days_ago(1), verified=False, ip="175.16.199.153", device="fp-nvl-3", face=5000)],
      [])

# takeover: months of Beijing on one phone, then a new device in New York.
ato = [ev(f"a-{i}", -86400 * (10 - i), "u-victim", ip="175.16.199.80", device="fp-victim", face=5000) for i in range(5)]
ato.append(ev("a-thief", 0, "u-victim", ip="203.0.113.9", device="fp-thief", face=100000))
write("account-takeover", ato,
      [{"rule": "account-takeover", "action": "freeze", "scope": "account", "subject": "u-victim", "trigger_event_id": "a-thief"}])

# a traveller with their own phone in Tokyo; a new phone at home.
legit = [ev("tr-1", -86400, "u-traveller", ip="175.16.199.81", device="fp-trav", face=5000),
         ev("tr-2", 0, "u-traveller", ip="198.51.100.20", device="fp-trav", face=100000),
         ev("np-1", -86400, "u-newphone", ip="175.16.199.82", device="fp-old-phone", face=5000),
         ev("np-2", 0, "u-newphone", ip="175.16.199.83", device="fp-new-phone", face=100000)]
write("account-takeover-legit", legit, [])

# impossible travel: Beijing, then New York half an hour later, same device.
write("impossible-travel",
      [ev("it-1", 0, "u-jet", ip="175.16.199.84", device="fp-jet", face=1000),
       ev("it-2", 1800, "u-jet", ip="203.0.113.10", device="fp-jet", face=1000)],
      [{"rule": "impossible-travel", "action": "challenge", "scope": "account", "subject": "u-jet", "trigger_event_id": "it-2"}])

# Beijing to Tokyo in five hours: a flight, not a hijack.
write("impossible-travel-legit",
      [ev("fl-1", 0, "u-flyer", ip="175.16.199.85", device="fp-flyer", face=1000),
       ev("fl-2", 5 * 3600, "u-flyer", ip="198.51.100.21", device="fp-flyer", face=1000)],
      [])

# a Chinese account, known only from an in-store success, redeeming ¥1,500 in
# the US from a device it never used.
write("country-mismatch",
      [ev("cm-1", -86400 * 3, "u-cm", device="fp-cm-1", face=5000, channel="store"),
       ev("cm-2", 0, "u-cm", ip="203.0.113.20", device="fp-cm-2", face=150000)],
      [{"rule": "country-mismatch", "action": "challenge", "scope": "account", "subject": "u-cm", "trigger_event_id": "cm-2"}])

# a new phone at home, and a Japanese account at home in Tokyo.
write("country-mismatch-legit",
      [ev("cml-1", -86400 * 3, "u-home", device="fp-home-1", face=5000, channel="store"),
       ev("cml-2", 0, "u-home", ip="175.16.199.160", device="fp-home-2", face=150000),
       ev("cml-3", -86400, "u-jp", device="fp-jp-1", face=5000, channel="store", country="JP"),
       ev("cml-4", 60, "u-jp", ip="198.51.100.30", device="fp-jp-2", face=150000, country="JP")],
      [])

# redemptions from a hosting provider and from a VPN.
write("hosting-or-anonymous",
      [ev("h-1", 0, "u-cloud", ip="192.0.2.10", device="fp-cloud", face=10000),
       ev("h-2", 60, "u-vpn", ip="198.18.0.7", device="fp-vpn", face=10000)],
      [{"rule": "hosting-or-anonymous", "action": "challenge", "scope": "account", "subject": "u-cloud", "trigger_event_id": "h-1"},
       {"rule": "hosting-or-anonymous", "action": "challenge", "scope": "account", "subject": "u-vpn", "trigger_event_id": "h-2"}])

# home broadband over IPv4 and IPv6.
write("hosting-or-anonymous-legit",
      [ev("hl-1", 0, "u-home4", ip="175.16.199.170", device="fp-h4", face=10000),
       ev("hl-2", 60, "u-home6", ip="2001:db8::7", device="fp-h6", face=10000)],
      [])

# a leaked code list worked through: five codes, the third a decoy of the
# shipped honey list (config/rules/honey-decoys.txt); a second decoy later
# decides nothing new (the subjects are decided already).
leak = [ev(f"hc-{i}", i * 20, "u-leak", "invalid_code", ip="175.16.199.230", device="fp-leak", card=f"leaked-{i}")
        for i in range(5)]
leak[2]["card"]["code_hash"] = "dec0dec000000003"
leak.append(ev("hc-5", 200, "u-leak", "invalid_code", ip="175.16.199.230", device="fp-leak"))
leak[-1]["card"]["code_hash"] = "dec0dec00000000c"
write("honey-code", leak,
      [{"rule": "honey-code-account", "action": "freeze", "scope": "account", "subject": "u-leak",
        "score": 100, "trigger_event_id": "hc-2", "evidence": {"honey_list": "honey-decoys.txt"}},
       {"rule": "honey-code-device", "action": "block", "scope": "device", "subject": "fp-leak", "trigger_event_id": "hc-2"},
       {"rule": "honey-code-ip", "action": "block", "scope": "ip", "subject": "175.16.199.230", "trigger_event_id": "hc-2"}])

# honest customers: a code whose hash differs from a decoy by one digit, and
# a mistyped code followed by the right one.
honest = [ev("hl-1", 0, "u-honest-1", ip="175.16.199.231", device="fp-honest-1", face=10000),
          ev("hl-2", 30, "u-honest-2", "invalid_code", ip="175.16.199.232", device="fp-honest-2"),
          ev("hl-3", 60, "u-honest-2", ip="175.16.199.232", device="fp-honest-2", face=5000)]
honest[0]["card"]["code_hash"] = "dec0dec000000013"
write("honey-code-legit", honest, [])

# a repeat offender: an address guesses, is blocked for an hour, and comes
# back once the block lapsed: blocked for six hours (single-ip-guessing's
# ladder, 1 h, 6 h, 24 h within a week).
def utc(seconds):
    """A decision's `until`, as kamiguard writes it (UTC, milliseconds)."""
    t = (T0 + dt.timedelta(seconds=seconds)).astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03}Z"


def burst(prefix, t0, ip, n=50):
    return [ev(f"{prefix}-{i:02}", t0 + i * 5, f"u-{prefix}", "invalid_code", ip=ip, device=f"fp-{prefix}")
            for i in range(n)]


write("repeat-offender", burst("ro1", 0, "175.16.199.9") + burst("ro2", 5000, "175.16.199.9"),
      [{"rule": "single-ip-guessing", "subject": "175.16.199.9", "trigger_event_id": "ro1-49",
        "until": utc(245 + 3600), "evidence": {"offence": 1}},
       {"rule": "single-ip-guessing", "subject": "175.16.199.9", "trigger_event_id": "ro2-49",
        "until": utc(5245 + 6 * 3600), "evidence": {"offence": 2}}]
      # Each burst's account, at its fifth made-up code.
      + [{"rule": "account-guessing", "subject": f"u-{p}", "trigger_event_id": f"{p}-04"} for p in ("ro1", "ro2")])

# the same address abused again eight days later (a dynamic address that
# changed hands): past the week, the ladder starts over at an hour.
write("repeat-offender-legit", burst("rl1", 0, "175.16.199.10") + burst("rl2", 8 * 86400, "175.16.199.10"),
      [{"rule": "single-ip-guessing", "subject": "175.16.199.10", "trigger_event_id": "rl1-49",
        "until": utc(245 + 3600), "evidence": {"offence": 1}},
       {"rule": "single-ip-guessing", "subject": "175.16.199.10", "trigger_event_id": "rl2-49",
        "until": utc(8 * 86400 + 245 + 3600), "evidence": {"offence": 1}}]
      + [{"rule": "account-guessing", "subject": f"u-{p}", "trigger_event_id": f"{p}-04"} for p in ("rl1", "rl2")])

# a circuit breaker: a rule edit that challenges every redemption of ¥500 or
# more (a threshold typed ten times too low). Five minutes at its usual two
# challenges a minute, then the honest crowd it was never meant for: the
# eleventh challenge of the sixth minute is more than five times the usual
# rate (and at least ten), so the rule switches itself to shadow for ten
# minutes; the rest are published in shadow mode, enforced by no one.
BREAKER_RULE = """# A rule edit gone wrong: min_face_value_fen was meant to be 500000.
[[rule]]
id = "high-value-challenge"
kind = "match"
filter = { kind = ["redemption"], min_face_value_fen = 50000 }
action = "challenge"
duration_secs = 3600
score = 40
breaker = { multiple = 5, min_per_minute = 10, trailing_mins = 5, cooldown_secs = 600 }
"""


def crowd(prefix, per_minute):
    """`per_minute[m]` honest ¥600 redemptions in minute m, each by its own account."""
    events = []
    for m, n in enumerate(per_minute):
        for i in range(n):
            events.append(ev(f"{prefix}-{m}-{i:02}", m * 60 + i, f"u-{prefix}-{m}-{i:02}",
                             ip=f"175.16.199.{100 + i}", device=f"fp-{prefix}-{m}-{i:02}", face=60000))
    return events


def challenged(events, enforced):
    return [{"rule": "high-value-challenge", "action": "challenge", "subject": e["account"]["id"],
             "mode": "enforce" if i < enforced else "shadow"} for i, e in enumerate(events)]


tripped = crowd("cb", [2, 2, 2, 2, 2, 30, 3])
write("circuit-breaker", tripped, challenged(tripped, 10 + 11))
with open(os.path.join(HERE, "circuit-breaker", "rules.toml"), "w") as f:
    f.write(BREAKER_RULE)

# the same rule on a busy but ordinary day: the sixth minute rises to eight
# challenges, four times the usual but under the ten a minute that trips it.
steady = crowd("cbl", [2, 2, 2, 2, 2, 8, 3])
write("circuit-breaker-legit", steady, challenged(steady, len(steady)))
with open(os.path.join(HERE, "circuit-breaker-legit", "rules.toml"), "w") as f:
    f.write(BREAKER_RULE)

# a batch alarm: a day of honest typos against batch XM-2026-B7 (forty an
# hour), then 2,000 residential addresses each trying two codes of it in
# one hour, every address, device and account far under its own limits.
# The 500th failure of that hour is more than five times the usual forty
# (batch-failure-surge, shipped in shadow).
def typos(prefix, hours, per_hour, batch="XM-2026-B7"):
    events = []
    for h in range(hours):
        for i in range(per_hour):
            n = h * per_hour + i
            e = ev(f"{prefix}-{h:02}-{i:03}", h * 3600 + i * (3600 // per_hour), f"u-{prefix}-{n}", "invalid_code",
                   ip=f"175.16.199.{n % 200}", device=f"fp-{prefix}-{n}")
            e["card"]["batch"] = batch
            events.append(e)
    return events


def bots(t0, addresses=2000, tries=2, batch="XM-2026-B7"):
    events = []
    for i in range(addresses):
        for k in range(tries):
            # Spread over the hour: address i's tries half an hour apart.
            t = t0 + (i * 3600 // addresses) // tries + k * 1800
            e = ev(f"bot-{i:04}-{k}", t, f"u-res-{i}", "invalid_code",
                   ip=f"100.64.{i // 250}.{i % 250}", device=f"fp-res-{i}", card=f"guess-{i}-{k}")
            e["card"]["batch"] = batch
            events.append(e)
    return events


def nth_failure_in_window(events, n, start, end):
    inside = sorted((e for e in events if start <= (dt.datetime.fromisoformat(e["ts"]) - T0).total_seconds() < end),
                    key=lambda e: dt.datetime.fromisoformat(e["ts"]))
    return inside[n - 1]["event_id"]


day = typos("bt", 24, 40)
attack = day + typos("bt24", 1, 40)
for e in attack[-40:]:
    # the same honest hour goes on during the attack
    e["ts"] = ts((dt.datetime.fromisoformat(e["ts"]) - T0).total_seconds() + 24 * 3600)
attack += bots(24 * 3600)
trigger = nth_failure_in_window(attack, 500, 24 * 3600, 25 * 3600)
write("batch-alarm", attack,
      [{"rule": "batch-failure-surge", "action": "challenge", "scope": "batch", "subject": "XM-2026-B7",
        "mode": "shadow", "trigger_event_id": trigger, "evidence": {"value": 500, "usual": 40.0}}])

# a promotion evening: the batch's honest failures rise to three times the
# usual hour (120), under the 500 it takes; and a neighbouring batch's day
# is untouched by the other's.
promo = day + [dict(e, ts=ts((dt.datetime.fromisoformat(e["ts"]) - T0).total_seconds() + 24 * 3600))
               for e in typos("pr", 1, 120)]
write("batch-alarm-legit", promo, [])

# linked decisions (engine.links, switched on in the folder's engine.toml):
# an account with a second phone and a stolen card behind it, and a second
# account on its bot device, then the decoy that freezes it (honey rules).
# The frozen account's other device and the card it redeemed, and the
# blocked device's other account, each get a challenge naming the parent.
LINKS_ON = "# Linked decisions on, enforced (the service's default is off, and shadow).\n[links]\nenabled = true\nmode = \"enforce\"\n"
linked = [ev("lf-1", 0, "u-ring", ip="175.16.199.233", device="fp-ring-2", card="stolen-1", face=10000),
          ev("lf-2", 60, "u-ring-alt", ip="175.16.199.233", device="fp-ring", card="stolen-2", face=10000),
          ev("lf-3", 120, "u-ring", "invalid_code", ip="175.16.199.234", device="fp-ring")]
linked[2]["card"]["code_hash"] = "dec0dec000000005"
honey3 = lambda acct, dev, ip, trig: [
    {"rule": "honey-code-account", "action": "freeze", "subject": acct, "trigger_event_id": trig},
    {"rule": "honey-code-device", "action": "block", "subject": dev, "trigger_event_id": trig},
    {"rule": "honey-code-ip", "action": "block", "subject": ip, "trigger_event_id": trig}]
write("linked-freeze", linked,
      honey3("u-ring", "fp-ring", "175.16.199.234", "lf-3") +
      [{"rule": "honey-code-account", "action": "challenge", "scope": "device", "subject": "fp-ring-2",
        "mode": "enforce", "evidence": {"link": "account_devices", "via": {"scope": "account", "subject": "u-ring"}}},
       {"rule": "honey-code-account", "action": "challenge", "scope": "card", "subject": code("stolen-1"),
        "evidence": {"link": "account_cards"}},
       {"rule": "honey-code-device", "action": "challenge", "scope": "account", "subject": "u-ring-alt",
        "evidence": {"link": "device_accounts", "via": {"scope": "device", "subject": "fp-ring"}}}])
with open(os.path.join(HERE, "linked-freeze", "engine.toml"), "w") as f:
    f.write(LINKS_ON)

# a store's kiosk shared by twelve honest customers, then a thief trying a
# decoy on it: the kiosk is a hub (more than ten accounts), so its block
# reaches none of the twelve.
kiosk = [ev(f"lk-{i:02}", i * 60, f"u-kiosk-{i}", ip="175.16.199.235", device="fp-kiosk", face=5000)
         for i in range(12)]
kiosk.append(ev("lk-thief", 800, "u-kthief", "invalid_code", ip="175.16.199.236", device="fp-kiosk"))
kiosk[-1]["card"]["code_hash"] = "dec0dec000000006"
write("linked-freeze-legit", kiosk, honey3("u-kthief", "fp-kiosk", "175.16.199.236", "lk-thief"))
with open(os.path.join(HERE, "linked-freeze-legit", "engine.toml"), "w") as f:
    f.write(LINKS_ON)


# a list of made-up codes shared by three accounts, each on its own phone
# and address: each code is frozen when the third account tries it.
shared = []
for a in range(3):
    for j in range(2):
        shared.append(ev(f"list-{a}-{j}", a * 600 + j * 60, f"u-list-{a}", "invalid_code", card=f"list-{j}",
                         ip=f"175.16.199.{130 + a}", device=f"fp-list-{a}"))
write("code-list-shared", shared,
      [{"rule": "code-list-shared", "action": "freeze", "scope": "card", "subject": code(f"list-{j}"),
        "trigger_event_id": f"list-2-{j}"} for j in range(2)])

# typos: five customers each mistype a code of their own; a gift's giver
# finds it used (a real code, not a made-up one).
typo_events = [ev(f"tl-{i}", i * 60, f"u-typo-{i}", "invalid_code", card=f"typo-code-{i}",
                  ip=f"175.16.199.{140 + i}", device=f"fp-typo-{i}") for i in range(5)]
typo_events += [ev("tl-gift-1", 400, "u-friend-2", card="gift-2", ip="175.16.199.150", device="fp-friend-2"),
                ev("tl-gift-2", 900, "u-giver-2", "already_used", card="gift-2", ip="175.16.199.151", device="fp-giver-2")]
write("code-list-shared-legit", typo_events, [])

# one account failing six different codes, a new address and phone each
# time: challenged at the fifth.
write("account-guessing",
      [ev(f"ag-{i}", i * 120, "u-lister", "invalid_code", card=f"made-up-{i}", ip=f"175.16.199.{160 + i}",
          device=f"fp-lister-{i}") for i in range(6)],
      [{"rule": "account-guessing", "action": "challenge", "scope": "account", "subject": "u-lister",
        "trigger_event_id": "ag-4"}])

# a clumsy customer: one code mistyped three times, another once, then both
# redeemed.
write("account-guessing-legit",
      [ev("cl-0", 0, "u-clumsy", "invalid_code", card="clumsy-a", ip="175.16.199.170", device="fp-clumsy"),
       ev("cl-1", 30, "u-clumsy", "invalid_code", card="clumsy-a", ip="175.16.199.170", device="fp-clumsy"),
       ev("cl-2", 60, "u-clumsy", "wrong_pin", card="clumsy-a", ip="175.16.199.170", device="fp-clumsy"),
       ev("cl-3", 90, "u-clumsy", "invalid_code", card="clumsy-b", ip="175.16.199.170", device="fp-clumsy"),
       ev("cl-4", 120, "u-clumsy", card="clumsy-a", ip="175.16.199.170", device="fp-clumsy", face=10000),
       ev("cl-5", 150, "u-clumsy", card="clumsy-b", ip="175.16.199.170", device="fp-clumsy", face=10000)],
      [])

