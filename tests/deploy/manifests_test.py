#!/usr/bin/env python3
"""Invariants of deploy/k8s: every overlay rendered (by a small kustomize
subset implemented here; checked against `kubectl kustomize` when kubectl is
on PATH) and checked against the server's flags, the entrypoint and the
Dockerfile, so the manifests cannot drift from the code."""
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

ROOT = os.path.join(os.environ.get("TEST_SRCDIR", ""), os.environ.get("TEST_WORKSPACE", ""))
if not os.path.isdir(os.path.join(ROOT, "deploy")):
    ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = sorted(d for d in os.listdir(os.path.join(K8S, "overlays")))
MERGE_HEALTH_SERVICE = "dcpmerge.v1.MergeData"
SHUTDOWN_MARGIN_S = 5  # flush + listener shutdown (2 s) + metrics listener (~2 s)


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --------------------------------------------------------- mini kustomize ---
def strategic_merge(base, patch):
    """Maps merge recursively; lists of maps with a 'name' merge by name;
    other lists and scalars are replaced (kustomize's behaviour for the
    fields these manifests patch)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        for p in patch:
            for i, b in enumerate(out):
                if b["name"] == p["name"]:
                    out[i] = strategic_merge(b, p)
                    break
            else:
                out.append(copy.deepcopy(p))
        return out
    return copy.deepcopy(patch)


SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}


def render(directory):
    k = load_docs(os.path.join(directory, "kustomization.yaml"))[0]
    unknown = set(k) - SUPPORTED
    if unknown:
        raise AssertionError(f"{directory}: kustomization fields {unknown} are not supported by this "
                             f"test's renderer; extend it or keep overlays simple")
    docs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, r))
        docs += render(p) if os.path.isdir(p) else load_docs(p)
    for patch in k.get("patches", []):
        for pdoc in load_docs(os.path.join(directory, patch["path"])):
            hits = [i for i, d in enumerate(docs)
                    if d["kind"] == pdoc["kind"] and d["metadata"]["name"] == pdoc["metadata"]["name"]]
            if len(hits) != 1:
                raise AssertionError(f"patch {patch['path']}: {len(hits)} targets")
            docs[hits[0]] = strategic_merge(docs[hits[0]], pdoc)
    for img in k.get("images", []):
        for d in docs:
            for c in containers(d):
                name, _, _ = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img['newTag']}"
    if "namespace" in k:
        for d in docs:
            d["metadata"]["namespace"] = k["namespace"]
    return docs


def pod_spec(doc):
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def containers(doc):
    spec = pod_spec(doc)
    return [] if spec is None else spec.get("containers", []) + spec.get("initContainers", [])


def key(doc):
    return (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


def port_of(address):
    return int(address.rsplit(":", 1)[1])


# ------------------------------------------------- facts from the sources ---
def server_flag_default(name):
    m = re.search(r'ABSL_FLAG\([^,]+,\s*%s,\s*("([^"]*)"|[-0-9]+)' % name, read("server", "main.cc"))
    assert m, f"server/main.cc: no flag {name}"
    return m.group(2) if m.group(2) is not None else m.group(1)


def entrypoint_default(var):
    m = re.search(r':\s*"\$\{%s:=([^}]*)\}"' % var, read("deploy", "entrypoint.sh"))
    assert m, f"deploy/entrypoint.sh: no default for {var}"
    return m.group(1)


def entrypoint_variables():
    text = read("deploy", "entrypoint.sh")
    block = re.search(r"mapped=\((.*?)\)", text, re.S).group(1)
    return {"DCPMERGE_" + v for v in block.split()} | {"DCPMERGE_HOME", "DCPMERGE_ADMIN_TOKEN"}


class ManifestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = {o: render(os.path.join(K8S, "overlays", o)) for o in OVERLAYS}
        cls.external = {o: load_docs(os.path.join(K8S, "overlays", o, "secrets.example.yaml"))
                        for o in OVERLAYS}

    def one(self, docs, kind):
        found = [d for d in docs if d["kind"] == kind]
        self.assertEqual(len(found), 1, f"want exactly one {kind}")
        return found[0]

    def config(self, docs):
        return self.one(docs, "ConfigMap")["data"]

    def ports(self, docs):
        c = self.one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        return {p["name"]: p["containerPort"] for p in c["ports"]}

    def test_renderer_matches_kubectl_kustomize(self):
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            self.skipTest("kubectl not on PATH: own renderer only")
        # kustomize does not follow the runfiles' symlinks: render a real copy.
        tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        copy_root = os.path.join(tmp, "k8s")
        shutil.copytree(K8S, copy_root, symlinks=False)
        for o in OVERLAYS:
            out = subprocess.run([kubectl, "kustomize", os.path.join(copy_root, "overlays", o)],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            theirs = {key(d): d for d in yaml.safe_load_all(out.stdout) if d}
            ours = {key(d): d for d in self.rendered[o]}
            self.assertEqual(sorted(theirs), sorted(ours), o)
            for k in ours:
                self.assertEqual(ours[k], theirs[k], f"{o}: {k} differs from kubectl kustomize")

    def test_every_overlay_is_one_group_in_its_namespace(self):
        namespaces = set()
        for o, docs in self.rendered.items():
            ns = {d["metadata"].get("namespace") for d in docs}
            self.assertEqual(len(ns), 1, f"{o}: namespaces {ns}")
            namespaces |= ns
            sts = self.one(docs, "StatefulSet")
            self.assertEqual(sts["spec"]["replicas"], 1, o)
            tmpl_labels = sts["spec"]["template"]["metadata"]["labels"]
            for k, v in sts["spec"]["selector"]["matchLabels"].items():
                self.assertEqual(tmpl_labels.get(k), v, o)
        self.assertEqual(len(namespaces), len(OVERLAYS), "each group needs its own namespace")

    def test_ports_agree_with_server_entrypoint_and_dockerfile(self):
        expose = re.search(r"^EXPOSE (.*)$", read("deploy", "Dockerfile"), re.M).group(1).split()
        server_rank = port_of(server_flag_default("rank_address"))
        server_admin = port_of(server_flag_default("admin_address"))
        for o, docs in self.rendered.items():
            ports = self.ports(docs)
            cfg = self.config(docs)
            self.assertEqual(ports["rank"], server_rank, o)
            self.assertEqual(ports["admin"], server_admin, o)
            for name, var in (("rank", "DCPMERGE_RANK_ADDRESS"), ("admin", "DCPMERGE_ADMIN_ADDRESS"),
                              ("health", "DCPMERGE_HEALTH_ADDRESS"), ("metrics", "DCPMERGE_METRICS_ADDRESS")):
                self.assertEqual(port_of(entrypoint_default(var)), ports[name], f"{o}: entrypoint {var}")
                self.assertEqual(port_of(cfg[var]), ports[name], f"{o}: ConfigMap {var}")
                self.assertIn(str(ports[name]), expose, f"Dockerfile EXPOSE lacks {name}")
            self.assertEqual(sorted(expose), sorted(str(p) for p in ports.values()), o)
            svc = self.one(docs, "Service")
            for p in svc["spec"]["ports"]:
                self.assertIn(p["targetPort"], ports, f"{o}: Service targets unknown port {p}")
                self.assertEqual(p["port"], ports[p["targetPort"]], o)
            self.assertTrue(svc["spec"].get("publishNotReadyAddresses"),
                            f"{o}: ranks must resolve the server before it is Ready")
            self.assertEqual(svc["spec"].get("clusterIP"), "None", f"{o}: headless Service")
            self.assertEqual(self.one(docs, "StatefulSet")["spec"]["serviceName"], svc["metadata"]["name"])

    def test_config_variables_are_known_to_the_entrypoint(self):
        known = entrypoint_variables()
        for o, docs in self.rendered.items():
            sts = self.one(docs, "StatefulSet")
            env = sts["spec"]["template"]["spec"]["containers"][0].get("env", [])
            names = set(self.config(docs)) | {e["name"] for e in env}
            self.assertFalse(names - known, f"{o}: the entrypoint refuses {names - known}")
            self.assertNotIn("NCCL_NVLS_ENABLE", names, o)

    def test_probes(self):
        header = read("server", "merge_server.h")
        self.assertIn(f'kMergeHealthService[] = "{MERGE_HEALTH_SERVICE}"', header)
        for o, docs in self.rendered.items():
            c = self.one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
            ports = self.ports(docs)
            ready, live = c["readinessProbe"]["grpc"], c["livenessProbe"]["grpc"]
            self.assertEqual(ready["service"], MERGE_HEALTH_SERVICE, o)
            self.assertEqual(live.get("service", ""), "", o)
            # TLS is on (the kubelet cannot probe through it): the probes must
            # use the plaintext health-only listener.
            self.assertEqual(ready["port"], ports["health"], o)
            self.assertEqual(live["port"], ports["health"], o)
            self.assertEqual(port_of(self.config(docs)["DCPMERGE_HEALTH_ADDRESS"]), ports["health"])

    def test_resources_gpu_and_grace_period(self):
        for o, docs in self.rendered.items():
            spec = self.one(docs, "StatefulSet")["spec"]["template"]["spec"]
            res = spec["containers"][0]["resources"]
            for part in ("requests", "limits"):
                self.assertEqual(res[part].get("nvidia.com/gpu"), 1, f"{o}: {part}")
                self.assertIn("cpu", res[part], o)
                self.assertIn("memory", res[part], o)
            drain_ms = int(self.config(docs)["DCPMERGE_DRAIN_TIMEOUT_MS"])
            self.assertGreater(spec["terminationGracePeriodSeconds"], drain_ms / 1000 + SHUTDOWN_MARGIN_S, o)
            sec = spec.get("securityContext", {})
            self.assertTrue(sec.get("runAsNonRoot"), o)

    def test_metrics_scrape_annotations(self):
        for o, docs in self.rendered.items():
            ann = self.one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
            self.assertEqual(ann["prometheus.io/scrape"], "true", o)
            self.assertEqual(int(ann["prometheus.io/port"]), self.ports(docs)["metrics"], o)
            self.assertEqual(ann["prometheus.io/path"], "/metrics", o)

    def check_references(self, where, docs, available):
        """Every ConfigMap/Secret a pod refers to exists (with the keys used)."""
        by_key = {key(d): d for d in available}

        def data_keys(kind, ns, name):
            d = by_key.get((kind, ns, name))
            self.assertIsNotNone(d, f"{where}: {kind} {ns}/{name} is referenced but defined nowhere")
            return set(d.get("data", {})) | set(d.get("stringData", {}))

        for d in docs:
            spec = pod_spec(d)
            if spec is None:
                continue
            ns = d["metadata"].get("namespace", "")
            mounts = {}
            for v in spec.get("volumes", []):
                if "secret" in v:
                    ks = data_keys("Secret", ns, v["secret"]["secretName"])
                    items = v["secret"].get("items")
                    for it in items or []:
                        self.assertIn(it["key"], ks, f"{where}: volume {v['name']}")
                    mounts[v["name"]] = {it["path"] for it in items} if items else ks
                if "configMap" in v:
                    data_keys("ConfigMap", ns, v["configMap"]["name"])
            for c in containers(d):
                for ef in c.get("envFrom", []):
                    if "configMapRef" in ef:
                        data_keys("ConfigMap", ns, ef["configMapRef"]["name"])
                    if "secretRef" in ef:
                        data_keys("Secret", ns, ef["secretRef"]["name"])
                mount_dirs = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
                for m in c.get("volumeMounts", []):
                    self.assertIn(m["name"], {v["name"] for v in spec.get("volumes", [])}, where)
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {})
                    for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        if field in ref:
                            self.assertIn(ref[field]["key"], data_keys(kind, ns, ref[field]["name"]), where)
                    # *_FILE variables point into a mounted Secret that has the file.
                    if e["name"].endswith("_FILE") and "value" in e:
                        directory, _, base = e["value"].rpartition("/")
                        self.assertIn(directory, mount_dirs, f"{where}: {e['name']}={e['value']} not mounted")
                        vol = mount_dirs[directory]
                        self.assertIn(base, mounts.get(vol, set()), f"{where}: {e['name']} file missing")

    def test_referenced_secrets_and_configmaps_exist(self):
        for o, docs in self.rendered.items():
            self.check_references(o, docs, docs + self.external[o])
            env = {e["name"]: e.get("value") for e in
                   self.one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["env"]}
            self.assertIn("DCPMERGE_ADMIN_TOKEN_FILE", env, f"{o}: admin token must come from a file")
            self.assertNotIn("DCPMERGE_ADMIN_TOKEN", env, f"{o}: no token in the pod spec")
            self.assertIn("DCPMERGE_TLS_CERT_FILE", env, o)
        ex = os.path.join(K8S, "examples")
        docs = load_docs(os.path.join(ex, "rank-config.yaml"))
        self.check_references("examples", docs, docs + load_docs(os.path.join(ex, "secrets.example.yaml")))

    def test_images_pinned(self):
        for o, docs in self.rendered.items():
            for d in docs:
                for c in containers(d):
                    img = c["image"]
                    tag = img.rsplit("/", 1)[-1]
                    self.assertTrue(":" in tag or "@sha256:" in img, f"{o}: {img} has no tag")
                    self.assertFalse(img.endswith(":latest"), f"{o}: {img}")
        for d in load_docs(os.path.join(K8S, "examples", "rank-config.yaml")):
            for c in containers(d):
                self.assertFalse(c["image"].endswith(":latest"))
        for arg in ("BUILD_BASE", "RUNTIME_BASE"):
            img = re.search(r"^ARG %s=(\S+)" % arg, read("deploy", "Dockerfile"), re.M).group(1)
            self.assertIn(":", img)
            self.assertFalse(img.endswith(":latest"), img)

    def test_network_policy_keeps_admin_internal(self):
        for o, docs in self.rendered.items():
            np = self.one(docs, "NetworkPolicy")
            ports = self.ports(docs)
            pod_labels = self.one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
            for k, v in np["spec"]["podSelector"]["matchLabels"].items():
                self.assertEqual(pod_labels.get(k), v, f"{o}: policy does not select the server")
            self.assertIn("Ingress", np["spec"]["policyTypes"])
            covered = {}
            for rule in np["spec"]["ingress"]:
                self.assertTrue(rule.get("from"), f"{o}: a rule without 'from' admits everyone")
                self.assertTrue(rule.get("ports"), f"{o}: a rule without 'ports' opens every port")
                for p in rule["ports"]:
                    covered.setdefault(p["port"], []).append(rule["from"])
            # Admin: only from the operator namespace's operator pods, in a
            # rule of its own (never together with the rank port).
            self.assertIn(ports["admin"], covered, f"{o}: admin port not covered")
            for rule in np["spec"]["ingress"]:
                rule_ports = {p["port"] for p in rule["ports"]}
                if ports["admin"] in rule_ports:
                    self.assertEqual(rule_ports, {ports["admin"]}, o)
                    for peer in rule["from"]:
                        self.assertNotIn("ipBlock", peer, o)
                        ns = peer.get("namespaceSelector", {}).get("matchLabels", {})
                        self.assertEqual(ns.get("kubernetes.io/metadata.name"), "dcpmerge-operator", o)
                        self.assertEqual(peer.get("podSelector", {}).get("matchLabels", {}),
                                         {"dcpmerge.io/client": "operator"}, o)
            self.assertIn(ports["rank"], covered, o)
            self.assertIn(ports["metrics"], covered, o)

    def test_rank_example_finds_the_server(self):
        docs = load_docs(os.path.join(K8S, "examples", "rank-config.yaml"))
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        target = cm["data"]["DCPMERGE_SERVER_TARGET"]
        group = self.rendered["group-a"]
        sts, svc = self.one(group, "StatefulSet"), self.one(group, "Service")
        ns = sts["metadata"]["namespace"]
        self.assertEqual(target, f"{sts['metadata']['name']}-0.{svc['metadata']['name']}.{ns}.svc.cluster.local:"
                                 f"{self.ports(group)['rank']}")
        self.assertEqual(int(cm["data"]["DCPMERGE_WORLD_SIZE"]), int(self.config(group)["DCPMERGE_WORLD_SIZE"]))
        # The rank pod is admitted by the rank rule of the server's policy.
        pod = next(d for d in docs if d["kind"] == "Pod")
        np = self.one(group, "NetworkPolicy")
        rank_rule = next(r for r in np["spec"]["ingress"] if self.ports(group)["rank"] in {p["port"] for p in r["ports"]})
        admitted = False
        for peer in rank_rule["from"]:
            ns_ok = peer["namespaceSelector"]["matchLabels"].get("kubernetes.io/metadata.name") == \
                pod["metadata"]["namespace"]
            labels_ok = all(pod["metadata"]["labels"].get(k) == v
                            for k, v in peer["podSelector"]["matchLabels"].items())
            admitted |= ns_ok and labels_ok
        self.assertTrue(admitted, "the example rank pod is not admitted by the server's NetworkPolicy")

    def test_renderer_merges_like_kustomize(self):
        base = {"a": {"b": 1, "c": [1, 2]}, "l": [{"name": "x", "v": 1}, {"name": "y", "v": 2}]}
        patch = {"a": {"c": [3]}, "l": [{"name": "y", "v": 5}, {"name": "z", "v": 6}]}
        self.assertEqual(strategic_merge(base, patch),
                         {"a": {"b": 1, "c": [3]},
                          "l": [{"name": "x", "v": 1}, {"name": "y", "v": 5}, {"name": "z", "v": 6}]})


if __name__ == "__main__":
    unittest.main(verbosity=2)
