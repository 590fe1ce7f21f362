"""Checks the deploy/ folder for what can be checked without a Docker engine
or a Kubernetes cluster: every YAML parses, every file a manifest mounts or
copies exists, the rules ConfigMap carries exactly the shipped rule files,
and ports and probe paths agree with the container configuration.

Run by tests/deploy.rs; prints one line per problem and exits 1 if any.
"""

import pathlib
import re
import sys
import tomllib

import yaml

root = pathlib.Path(sys.argv[1])
deploy = root / "deploy"
problems = []


def check(cond, message):
    if not cond:
        problems.append(message)


def load_all(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problems.append(f"{path}: {e}")
        return []


container = tomllib.loads((deploy / "compose/kamiguard.toml").read_text())
port = int(container["http"]["listen"].rsplit(":", 1)[1])
check(container["http"]["listen"].startswith("0.0.0.0:"), "the container must listen beyond loopback")

# Dockerfile: every COPY source from the build context exists.
for line in (deploy / "Dockerfile").read_text().splitlines():
    m = re.match(r"COPY (?!--from)(.+)", line)
    if m:
        for src in m.group(1).split()[:-1]:
            check((root / src).exists(), f"Dockerfile copies {src}, which does not exist")
check(f"EXPOSE {port}" in (deploy / "Dockerfile").read_text(), "Dockerfile must expose the HTTP port")

# compose.yaml
(compose,) = load_all(deploy / "compose.yaml")
services = compose["services"]
check(set(services) == {"kafka", "kamiguard", "prometheus", "grafana"}, f"compose services: {sorted(services)}")
build = services["kamiguard"]["build"]
check((deploy / build["context"] / build["dockerfile"]).exists(), "compose builds a Dockerfile that exists")
check(f"{port}:{port}" in services["kamiguard"]["ports"], "compose publishes the HTTP port")
for name in ("prometheus", "grafana"):
    for volume in services[name]["volumes"]:
        src = volume.split(":")[0]
        check((deploy / src).exists(), f"compose mounts {src} into {name}, which does not exist")
(prom,) = load_all(deploy / "prometheus/prometheus.yml")
targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
check(targets == [f"kamiguard:{port}"], f"prometheus scrapes {targets}")

# Kubernetes
k8s = deploy / "k8s"
(kustomization,) = load_all(k8s / "kustomization.yaml")
docs = {}
for resource in kustomization["resources"]:
    for d in load_all(k8s / resource):
        docs[d["kind"]] = d
check(set(docs) >= {"Deployment", "Service", "PodMonitor"}, f"k8s kinds: {sorted(docs)}")
generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
# The rule files and the honey lists they name, which sit beside them.
rule_files = sorted(p.name for p in (root / "config/rules").glob("*.toml"))
rule_files = sorted(rule_files + [p.name for p in (root / "config/rules").glob("*.txt")])
check(sorted(pathlib.Path(f).name for f in generated["kamiguard-rules"]) == rule_files,
      f"the rules ConfigMap must carry exactly {rule_files}")
for files in generated.values():
    for f in files:
        src = f.split("=", 1)[-1]
        check((k8s / src).exists(), f"kustomization reads {src}, which does not exist")
pod = docs["Deployment"]["spec"]["template"]["spec"]
(c,) = pod["containers"]
check(c["ports"][0]["containerPort"] == port, "the Deployment's containerPort is the HTTP port")
check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probes /healthz")
check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probes /readyz")
check(pod["terminationGracePeriodSeconds"] > 30, "the grace period must outlast the 30 s shutdown timeout")
mounted = {v["name"] for v in pod["volumes"]}
check({m["name"] for m in c["volumeMounts"]} <= mounted, "every volumeMount has a volume")
check(docs["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics", "the PodMonitor scrapes /metrics")
selector = docs["Service"]["spec"]["selector"]
check(all(docs["Deployment"]["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items()),
      "the Service selects the Deployment's pods")

# The admin API must not leave the pod or host without TLS: the container
# config keeps it on loopback, and no Service, published compose port,
# container port or NetworkPolicy rule names its port.
admin = container.get("admin", {})
admin_listen = admin.get("listen", "127.0.0.1:9465")
admin_port = int(admin_listen.rsplit(":", 1)[1])
check(admin_listen.startswith("127.") or "tls_cert" in admin, "the container's admin API must stay on loopback or have TLS")
for p in docs["Service"]["spec"]["ports"]:
    check(p["port"] != admin_port and p.get("targetPort") not in (admin_port, "admin"),
          f"the Service exposes the admin port: {p}")
check(all(str(admin_port) not in str(p) for p in services["kamiguard"].get("ports", [])),
      "compose publishes the admin port")
check(all(p["containerPort"] != admin_port for p in c["ports"]), "the Deployment declares the admin port")
check(f"EXPOSE {admin_port}" not in (deploy / "Dockerfile").read_text(), "the Dockerfile exposes the admin port")
policy = docs.get("NetworkPolicy")
check(policy is not None, "deploy/k8s needs a NetworkPolicy")
if policy:
    check("Ingress" in policy["spec"]["policyTypes"], "the NetworkPolicy restricts ingress")
    allowed = [p["port"] for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", [])]
    check(allowed and admin_port not in allowed and all(p == port for p in allowed),
          f"the NetworkPolicy admits ports {allowed}; only {port}")
    check(policy["spec"]["podSelector"]["matchLabels"] == docs["Deployment"]["spec"]["selector"]["matchLabels"],
          "the NetworkPolicy selects kamiguard's pods")
for e in c.get("env", []):
    check("valueFrom" not in e or "secretKeyRef" not in e["valueFrom"] or e["name"].endswith("_FILE"),
          f"{e['name']}: secrets are mounted as files")

# Grafana provisioning points where compose mounts the dashboards.
(provider,) = load_all(deploy / "grafana/provisioning/dashboards/kamiguard.yml")
check(provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards",
      "the dashboard provider reads where compose mounts the dashboards")

for p in problems:
    print(p)
sys.exit(1 if problems else 0)
