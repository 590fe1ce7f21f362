"""An outside client for kamiguard: kafka-python, an independent pure-Python
implementation of the Kafka protocol. Produces attempt events from a file,
then reads the decisions and dead letters kamiguard published, and prints
them as one JSON object on stdout.

Run by tests/kafka.rs with the interpreter of .venv-interop (scripts/setup.sh).
"""

import argparse
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def read(bootstrap, topic, want, timeout):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    seen = []
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for r in records:
                seen.append({
                    "key": r.key.decode("utf-8", "replace") if r.key is not None else None,
                    "value": r.value.decode("utf-8", "replace"),
                    "headers": {k: v.decode("utf-8", "replace") for k, v in r.headers},
                })
    consumer.close()
    return seen


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--events", required=True, help="JSON lines to produce")
    p.add_argument("--decisions", type=int, required=True, help="decisions to wait for")
    p.add_argument("--dead-letters", type=int, required=True, help="dead letters to wait for")
    p.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()

    producer = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", linger_ms=5)
    with open(a.events, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if line:
                producer.send("kamiguard.attempts", value=line, key=b"interop")
    producer.flush(timeout=a.timeout)
    producer.close()

    out = {
        "decisions": read(a.bootstrap, "kamiguard.decisions", a.decisions, a.timeout),
        "dead_letters": read(a.bootstrap, "kamiguard.attempts.dlq", a.dead_letters, a.timeout),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
