#!/usr/bin/env python3
"""Invariants of deploy/k8s: the base, every overlay and the optional
components rendered (by a small kustomize subset implemented here; checked
against `kubectl kustomize` when kubectl is on PATH) and checked against the
server's flags, the entrypoint and the Dockerfile, so the manifests cannot
drift from the code; every pod template against the Pod Security Standards
("restricted"), the NCCL overlay's network, /dev/shm and NCCL settings, and
the rank-side examples against the server's NetworkPolicy."""
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import yaml

ROOT = os.path.join(os.environ.get("TEST_SRCDIR", ""), os.environ.get("TEST_WORKSPACE", ""))
if not os.path.isdir(os.path.join(ROOT, "deploy")):
    ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = sorted(d for d in os.listdir(os.path.join(K8S, "overlays")))
# Optional components rendered on top of overlays (what an operator gets by
# adding them to the overlay's `components:`).
VARIANTS = {
    "group-a+monitoring": ("group-a", ["../../components/monitoring"]),
    "group-c-nccl+rdma": ("group-c-nccl", ["../../components/rdma"]),
    "group-c-nccl+rdma+monitoring": ("group-c-nccl", ["../../components/rdma", "../../components/monitoring"]),
}
MERGE_HEALTH_SERVICE = "dcpmerge.v1.MergeData"
SHUTDOWN_MARGIN_S = 5  # flush + listener shutdown (2 s) + metrics listener (~2 s)
PLACEHOLDER = "SET-BY-OVERLAY"
CONFIG = "dcpmerge-config"   # generated ConfigMap of DCPMERGE_* settings
NCCL_CONFIG = "dcpmerge-nccl"  # generated ConfigMap of NCCL_* settings (components/nccl)
PORT_RANGE_SYSCTL = "net.ipv4.ip_local_port_range"


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --------------------------------------------------------- mini kustomize ---
# The subset of kustomize (v5) these manifests use: resources, components,
# namespace, images (newName/newTag/digest), configMapGenerator (envs,
# literals; behavior create/merge/replace; name hash suffix and the name
# references in pod specs), patches (strategic merge, or JSON 6902 with a
# target). Anything else in a kustomization fails the test.

# Merge keys of the lists these manifests patch (Kubernetes' patchMergeKey);
# a list not named here is replaced by the patch, as kustomize does.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "volumes": "name", "env": "name", "volumeMounts": "mountPath",
              "imagePullSecrets": "name"}


def merge_key(field, items):
    if field in MERGE_KEYS:
        return MERGE_KEYS[field]
    if field == "ports":  # container ports: containerPort; Service ports: port
        return "containerPort" if all("containerPort" in x for x in items) else "port"
    return None


def strategic_merge(base, patch, field=None, kind=None):
    """Maps merge recursively; lists with a merge key merge by it (kustomize's
    order: the patch's elements first, in its order, then the base's other
    elements); other lists and scalars are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v, k, kind) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and kind != "NetworkPolicy":
        mk = merge_key(field, base + patch)
        if mk and all(isinstance(x, dict) and mk in x for x in base + patch):
            by_key = {b[mk]: b for b in base}
            out = [strategic_merge(by_key[p[mk]], p, None, kind) if p[mk] in by_key else copy.deepcopy(p)
                   for p in patch]
            seen = {p[mk] for p in patch}
            return out + [copy.deepcopy(b) for b in base if b[mk] not in seen]
    return copy.deepcopy(patch)


def json_pointer(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json6902(doc, ops):
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = json_pointer(op["path"])
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if op["op"] in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(node, list):
                if last == "-":
                    node.append(value)
                elif op["op"] == "add":
                    node.insert(int(last), value)
                else:
                    node[int(last)] = value
            else:
                if op["op"] == "replace" and last not in node:
                    raise AssertionError(f"json patch: replace of missing {op['path']}")
                node[last] = value
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"json patch op {op['op']} not supported by this renderer")
    return doc


def parse_env_file(path):
    data = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            k, sep, v = line.partition("=")
            if not sep:
                raise AssertionError(f"{path}: line without '=': {line}")
            data[k] = v
    return data


def kustomize_hash(cm):
    """kustomize's name suffix of a generated ConfigMap (api/hasher)."""
    encoded = json.dumps({"kind": "ConfigMap", "name": "", "data": cm.get("data", {})},
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    h = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return h.translate(str.maketrans("013ae", "ghkmt"))


SUPPORTED = {"apiVersion", "kind", "resources", "components", "namespace", "images", "patches",
             "configMapGenerator"}
GENERATED = "__generated__"  # marker on generated ConfigMaps until their names are hashed


def accumulate(directory, docs, extra_components=()):
    k = load_docs(os.path.join(directory, "kustomization.yaml"))[0]
    unknown = set(k) - SUPPORTED
    if unknown:
        raise AssertionError(f"{directory}: kustomization fields {unknown} are not supported by this "
                             f"test's renderer; extend it or keep overlays simple")
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, r))
        docs += accumulate(p, []) if os.path.isdir(p) else load_docs(p)
    for c in list(k.get("components", [])) + list(extra_components):
        p = os.path.normpath(os.path.join(directory, c))
        ck = load_docs(os.path.join(p, "kustomization.yaml"))[0]
        assert ck.get("kind") == "Component", f"{p} is not a kustomize Component"
        docs = accumulate(p, docs)
    for g in k.get("configMapGenerator", []):
        data = {}
        for e in g.get("envs", []):
            data.update(parse_env_file(os.path.join(directory, e)))
        for lit in g.get("literals", []):
            key_, _, value = lit.partition("=")
            data[key_] = value
        behavior = g.get("behavior", "create")
        hits = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == g["name"]]
        if behavior == "create":
            assert not hits, f"{directory}: ConfigMap {g['name']} exists already"
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]},
                         "data": data, GENERATED: True})
        else:
            assert len(hits) == 1, f"{directory}: {behavior} of missing ConfigMap {g['name']}"
            hits[0]["data"] = {**hits[0]["data"], **data} if behavior == "merge" else data
    if "namespace" in k:
        for d in docs:
            d["metadata"]["namespace"] = k["namespace"]
    for patch in k.get("patches", []):
        pdocs = load_docs(os.path.join(directory, patch["path"]))
        if len(pdocs) == 1 and isinstance(pdocs[0], list):  # JSON 6902
            t = patch["target"]
            hits = [i for i, d in enumerate(docs) if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
            assert len(hits) == 1, f"patch {patch['path']}: {len(hits)} targets"
            docs[hits[0]] = json6902(docs[hits[0]], pdocs[0])
            continue
        for pdoc in pdocs:
            hits = [i for i, d in enumerate(docs)
                    if d["kind"] == pdoc["kind"] and d["metadata"]["name"] == pdoc["metadata"]["name"]]
            assert len(hits) == 1, f"patch {patch['path']}: {len(hits)} targets"
            docs[hits[0]] = strategic_merge(docs[hits[0]], pdoc, kind=pdoc["kind"])
    for img in k.get("images", []):
        for d in docs:
            for c in containers(d):
                name, tag, digest = split_image(c["image"])
                if name == img["name"]:
                    name = img.get("newName", name)
                    tag = img.get("newTag", tag)
                    digest = img.get("digest", digest)
                    c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    return docs


def render(directory, extra_components=()):
    docs = accumulate(directory, [], extra_components)
    # The last step, as kustomize: hash suffixes, then the references to them.
    renamed = {}
    for d in docs:
        if d.pop(GENERATED, False):
            old = d["metadata"]["name"]
            d["metadata"]["name"] = f"{old}-{kustomize_hash(d)}"
            renamed[(d["metadata"].get("namespace", ""), old)] = d["metadata"]["name"]
    for d in docs:
        spec = pod_spec(d)
        if spec is None:
            continue
        ns = d["metadata"].get("namespace", "")

        def fix(ref):
            ref["name"] = renamed.get((ns, ref["name"]), ref["name"])

        for v in spec.get("volumes", []):
            if "configMap" in v:
                fix(v["configMap"])
            for src in v.get("projected", {}).get("sources", []):
                if "configMap" in src:
                    fix(src["configMap"])
        for c in containers(d):
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    fix(ef["configMapRef"])
            for e in c.get("env", []):
                if "configMapKeyRef" in e.get("valueFrom", {}):
                    fix(e["valueFrom"]["configMapKeyRef"])
    return docs


def split_image(image):
    image, _, digest = image.partition("@")
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, _, tag = image.rpartition(":")
    else:
        tag = ""
    return image, tag, digest


def pod_spec(doc):
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job", "ReplicaSet"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_annotations(doc):
    if doc["kind"] == "Pod":
        return doc["metadata"].get("annotations", {})
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("annotations", {})
    return doc["spec"]["template"].get("metadata", {}).get("annotations", {})


def containers(doc):
    spec = pod_spec(doc)
    return [] if spec is None else (spec.get("containers", []) + spec.get("initContainers", [])
                                    + spec.get("ephemeralContainers", []))


def key(doc):
    return (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def generated(docs, name):
    """The ConfigMap generated as `name` (name-<hash>)."""
    found = [d for d in docs if d["kind"] == "ConfigMap" and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}",
                                                                          d["metadata"]["name"])]
    return found[0] if len(found) == 1 else None


def memory_bytes(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?", str(q))
    assert m, f"quantity {q}"
    mult = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
            "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


# -------------------------------------------- Pod Security Standards ---
# Written from https://kubernetes.io/docs/concepts/security/pod-security-standards/
# (policy version "latest", Kubernetes 1.31): every control of "baseline";
# "restricted" adds volume types, privilege escalation, non-root, seccomp and
# capabilities.
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def pss_violations(spec, annotations, level):
    """Violations of the Pod Security Standard `level` ("baseline" or
    "restricted") by one pod spec (+ the pod's annotations)."""
    assert level in ("baseline", "restricted")
    v = []
    psc = spec.get("securityContext") or {}
    ctrs = spec.get("containers", []) + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])
    csc = {c["name"]: c.get("securityContext") or {} for c in ctrs}

    # ---- baseline
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        v.append("hostProcess")
    for n, sc in csc.items():
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            v.append(f"{n}: hostProcess")
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f):
            v.append(f)
    for n, sc in csc.items():
        if sc.get("privileged"):
            v.append(f"{n}: privileged")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            v.append(f"{n}: capabilities.add {sorted(added - BASELINE_CAPABILITIES)}")
        if sc.get("procMount") not in (None, "Default"):
            v.append(f"{n}: procMount")
    for vol in spec.get("volumes", []):
        if "hostPath" in vol:
            v.append(f"volume {vol['name']}: hostPath")
    for c in ctrs:
        for p in c.get("ports", []):
            if p.get("hostPort"):
                v.append(f"{c['name']}: hostPort {p['hostPort']}")
    for where, sc in [("pod", psc)] + list(csc.items()):
        t = (sc.get("appArmorProfile") or {}).get("type")
        if t not in (None, "RuntimeDefault", "Localhost"):
            v.append(f"{where}: appArmorProfile {t}")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type") not in SELINUX_TYPES:
            v.append(f"{where}: seLinuxOptions.type {se.get('type')}")
        if se.get("user") or se.get("role"):
            v.append(f"{where}: seLinuxOptions user/role")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            v.append(f"{where}: seccomp Unconfined")
    for a, val in (annotations or {}).items():
        if a.startswith("container.apparmor.security.beta.kubernetes.io/") and \
                not (val == "runtime/default" or val.startswith("localhost/")):
            v.append(f"annotation {a}={val}")
    for s in psc.get("sysctls") or []:
        if s["name"] not in SAFE_SYSCTLS:
            v.append(f"sysctl {s['name']}")
    if level == "baseline":
        return v

    # ---- restricted
    for vol in spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            v.append(f"volume {vol['name']}: type {sorted(kinds - RESTRICTED_VOLUMES)}")
    pod_nonroot = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    if psc.get("runAsUser") == 0:
        v.append("pod: runAsUser 0")
    for n, sc in csc.items():
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{n}: allowPrivilegeEscalation not false")
        if sc.get("runAsNonRoot") is False or not (pod_nonroot or sc.get("runAsNonRoot") is True):
            v.append(f"{n}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            v.append(f"{n}: runAsUser 0")
        t = (sc.get("seccompProfile") or {}).get("type")
        if not (t in ("RuntimeDefault", "Localhost") or (t is None and pod_seccomp)):
            v.append(f"{n}: seccompProfile")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            v.append(f"{n}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            v.append(f"{n}: capabilities.add beyond NET_BIND_SERVICE")
    return v


def port_range(spec):
    """The pod's ip_local_port_range sysctl as (first, last), or None."""
    for s in (spec.get("securityContext") or {}).get("sysctls") or []:
        if s["name"] == PORT_RANGE_SYSCTL:
            first, last = (int(x) for x in s["value"].split())
            return first, last
    return None


def peer_admits(peer, pod_ns, pod_labels):
    """Does one NetworkPolicy `from` peer (with matchLabels only) admit a pod?"""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": pod_ns}
        if not all(ns_labels.get(k) == v for k, v in peer["namespaceSelector"].get("matchLabels", {}).items()):
            return False
        if peer["namespaceSelector"].get("matchExpressions"):
            return False
    ps = peer.get("podSelector", {})
    return all(pod_labels.get(k) == v for k, v in ps.get("matchLabels", {}).items())


def policy_admits(np, np_ns, pod_ns, pod_labels, port):
    for rule in np["spec"].get("ingress", []):
        ports_ok = any(p["port"] <= port <= p.get("endPort", p["port"]) for p in rule.get("ports", []))
        if not ports_ok:
            continue
        for peer in rule.get("from", []):
            same_ns_peer = "namespaceSelector" not in peer
            if same_ns_peer and pod_ns != np_ns:
                continue
            if peer_admits(peer, pod_ns, pod_labels):
                return True
    return False


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
        cls.variants = {v: render(os.path.join(K8S, "overlays", o), comps) for v, (o, comps) in VARIANTS.items()}
        cls.everything = {**cls.rendered, **cls.variants}
        cls.base = render(os.path.join(K8S, "base"))
        cls.external = {o: load_docs(os.path.join(K8S, "overlays", o, "secrets.example.yaml"))
                        for o in OVERLAYS}
        ex = os.path.join(K8S, "examples")
        cls.examples = {f: load_docs(os.path.join(ex, f)) for f in ("rank-config.yaml", "rank-nccl.yaml")}

    def one(self, docs, kind):
        found = [d for d in docs if d["kind"] == kind]
        self.assertEqual(len(found), 1, f"want exactly one {kind}")
        return found[0]

    def config(self, docs):
        cm = generated(docs, CONFIG)
        self.assertIsNotNone(cm, f"no generated ConfigMap {CONFIG}")
        return cm["data"]

    def spec(self, docs):
        return self.one(docs, "StatefulSet")["spec"]["template"]["spec"]

    def container(self, docs):
        return self.spec(docs)["containers"][0]

    def ports(self, docs):
        return {p["name"]: p["containerPort"] for p in self.container(docs)["ports"]}

    def is_nccl(self, docs):
        return self.config(docs)["DCPMERGE_DATA_PLANE"] == "nccl"

    def group_of(self, docs):
        """(ranks' namespace, group label) the overlay's rank rule admits."""
        np = self.one(docs, "NetworkPolicy")
        peer = np["spec"]["ingress"][0]["from"][0]
        return (peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                peer["podSelector"]["matchLabels"]["dcpmerge.io/group"])

    # ------------------------------------------------------ the renderer ---
    def test_renderer_matches_kubectl_kustomize(self):
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            self.skipTest("kubectl not on PATH: own renderer only")
        # kustomize does not follow the runfiles' symlinks: render a real copy.
        tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        copy_root = os.path.join(tmp, "k8s")
        shutil.copytree(K8S, copy_root, symlinks=False)
        targets = {o: os.path.join(copy_root, "overlays", o) for o in OVERLAYS}
        targets["base"] = os.path.join(copy_root, "base")
        for v, (o, comps) in VARIANTS.items():  # overlay copies with the extra components
            d = os.path.join(copy_root, "overlays", v)
            shutil.copytree(os.path.join(copy_root, "overlays", o), d)
            kpath = os.path.join(d, "kustomization.yaml")
            k = load_docs(kpath)[0]
            k["components"] = k.get("components", []) + comps
            with open(kpath, "w") as f:
                yaml.safe_dump(k, f)
            targets[v] = d
        ours_all = {**self.everything, "base": self.base}
        for name, path in targets.items():
            out = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            theirs = {key(d): d for d in yaml.safe_load_all(out.stdout) if d}
            ours = {key(d): d for d in ours_all[name]}
            self.assertEqual(sorted(theirs), sorted(ours), name)
            for k in ours:
                self.assertEqual(ours[k], theirs[k], f"{name}: {k} differs from kubectl kustomize")

    def test_renderer_merges_like_kustomize(self):
        base = {"a": {"b": 1, "c": [1, 2]},
                "containers": [{"name": "x", "v": 1}, {"name": "y", "v": 2}],
                "volumeMounts": [{"name": "a", "mountPath": "/a"}],
                "tolerations": [{"key": "k"}]}
        patch = {"a": {"c": [3]}, "containers": [{"name": "z", "v": 6}, {"name": "y", "v": 5}],
                 "volumeMounts": [{"name": "b", "mountPath": "/b"}], "tolerations": [{"key": "j"}]}
        self.assertEqual(strategic_merge(base, patch),
                         {"a": {"b": 1, "c": [3]},
                          "containers": [{"name": "z", "v": 6}, {"name": "y", "v": 5}, {"name": "x", "v": 1}],
                          "volumeMounts": [{"name": "b", "mountPath": "/b"}, {"name": "a", "mountPath": "/a"}],
                          "tolerations": [{"key": "j"}]})
        doc = {"spec": {"ingress": [{"ports": [{"port": 1}], "from": [{"a~b/c": 1}]}]}}
        out = json6902(doc, [{"op": "add", "path": "/spec/ingress/0/ports/-", "value": {"port": 2}},
                             {"op": "replace", "path": "/spec/ingress/0/from/0/a~0b~1c", "value": 7}])
        self.assertEqual(out["spec"]["ingress"][0], {"ports": [{"port": 1}, {"port": 2}], "from": [{"a~b/c": 7}]})
        self.assertEqual(split_image("r.io:5000/a/b:1.0@sha256:ab"), ("r.io:5000/a/b", "1.0", "sha256:ab"))
        self.assertEqual(split_image("r.io:5000/a/b"), ("r.io:5000/a/b", "", ""))

    def test_config_hash_is_kustomizes(self):
        # Known answer from `kubectl kustomize` (kustomize v5.5.0) for a
        # generator with data A=1, B=z, C=3: the suffix does not depend on
        # the name or namespace, only on the data.
        self.assertEqual(kustomize_hash({"data": {"A": "1", "B": "z", "C": "3"}}), "5875g8f26h")

    # ----------------------------------------------- groups and namespaces ---
    def test_every_overlay_is_one_group_in_its_namespace(self):
        namespaces, groups = set(), set()
        for o, docs in self.rendered.items():
            ns = {d["metadata"].get("namespace") for d in docs}
            self.assertEqual(len(ns), 1, f"{o}: namespaces {ns}")
            namespaces |= ns
            groups.add(self.group_of(docs))
            sts = self.one(docs, "StatefulSet")
            self.assertEqual(sts["spec"]["replicas"], 1, o)
            tmpl_labels = sts["spec"]["template"]["metadata"]["labels"]
            for k, v in sts["spec"]["selector"]["matchLabels"].items():
                self.assertEqual(tmpl_labels.get(k), v, o)
        self.assertEqual(len(namespaces), len(OVERLAYS), "each group needs its own namespace")
        self.assertEqual(len(groups), len(OVERLAYS), "each overlay must admit its own group's ranks")

    def test_base_sets_no_namespace_and_admits_no_rank(self):
        k = load_docs(os.path.join(K8S, "base", "kustomization.yaml"))[0]
        self.assertNotIn("namespace", k)
        for d in self.base:
            self.assertNotIn("namespace", d["metadata"], f"base hard-codes a namespace in {key(d)}")
        ns, group = self.group_of(self.base)
        self.assertEqual((ns, group), (PLACEHOLDER, PLACEHOLDER), "the base must admit no rank by itself")
        for o, docs in self.everything.items():
            self.assertNotIn(PLACEHOLDER, yaml.safe_dump_all(docs), f"{o}: a placeholder of the base is left")

    # ---------------------------------------------------------- config ---
    def test_config_is_generated_so_changes_roll_the_pod(self):
        k = load_docs(os.path.join(K8S, "base", "kustomization.yaml"))[0]
        gens = {g["name"]: g for g in k.get("configMapGenerator", [])}
        self.assertIn(CONFIG, gens, "the base's settings must come from a configMapGenerator")
        self.assertFalse(gens[CONFIG].get("options", {}).get("disableNameSuffixHash"), "the hash rolls the pod")
        for o, docs in self.everything.items():
            names = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
            refs = {ef["configMapRef"]["name"] for ef in self.container(docs).get("envFrom", [])}
            self.assertEqual(refs, names, f"{o}: the pod must reference exactly the generated ConfigMaps")
            self.assertIsNotNone(generated(docs, CONFIG), o)
            for n in names:
                self.assertRegex(n, r"-[a-z0-9]{10}$", f"{o}: {n} has no content hash")
        # A changed value gives a new name, and the StatefulSet follows it:
        # a new pod template, so the pod rolls.
        tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        copy_root = os.path.join(tmp, "k8s")
        shutil.copytree(K8S, copy_root)
        with open(os.path.join(copy_root, "base", "dcpmerge.env"), "a") as f:
            f.write("DCPMERGE_MAX_PENDING_STEPS=128\n")
        before = self.rendered["group-a"]
        after = render(os.path.join(copy_root, "overlays", "group-a"))
        old, new = generated(before, CONFIG)["metadata"]["name"], generated(after, CONFIG)["metadata"]["name"]
        self.assertNotEqual(old, new)
        self.assertEqual(self.container(after)["envFrom"][0]["configMapRef"]["name"], new)
        self.assertNotEqual(self.one(before, "StatefulSet")["spec"]["template"],
                            self.one(after, "StatefulSet")["spec"]["template"])

    def test_config_variables_are_known_to_the_entrypoint(self):
        known = entrypoint_variables()
        for o, docs in self.everything.items():
            env = self.container(docs).get("env", [])
            names = set(self.config(docs)) | {e["name"] for e in env}
            self.assertFalse(names - known, f"{o}: the entrypoint refuses {names - known}")
            nccl = generated(docs, NCCL_CONFIG)
            if self.is_nccl(docs):
                self.assertIsNotNone(nccl, f"{o}: NCCL data plane without its NCCL settings")
                self.assertTrue(all(k.startswith("NCCL_") for k in nccl["data"]), o)
            else:
                # The gRPC data plane has no NCCL settings at all.
                self.assertIsNone(nccl, o)
                self.assertNotIn("NCCL_NVLS_ENABLE", names, o)

    # ----------------------------------------------------------- ports ---
    def test_ports_agree_with_server_entrypoint_and_dockerfile(self):
        expose = re.search(r"^EXPOSE (.*)$", read("deploy", "Dockerfile"), re.M).group(1).split()
        server_rank = port_of(server_flag_default("rank_address"))
        server_admin = port_of(server_flag_default("admin_address"))
        for o, docs in self.everything.items():
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

    # ---------------------------------------------------------- probes ---
    def test_probes(self):
        header = read("server", "merge_server.h")
        self.assertIn(f'kMergeHealthService[] = "{MERGE_HEALTH_SERVICE}"', header)
        for o, docs in self.everything.items():
            c = self.container(docs)
            ports = self.ports(docs)
            ready, live = c["readinessProbe"]["grpc"], c["livenessProbe"]["grpc"]
            self.assertEqual(ready["service"], MERGE_HEALTH_SERVICE, o)
            self.assertEqual(live.get("service", ""), "", o)
            # TLS is on (the kubelet cannot probe through it): the probes must
            # use the plaintext health-only listener.
            self.assertEqual(ready["port"], ports["health"], o)
            self.assertEqual(live["port"], ports["health"], o)
            self.assertEqual(port_of(self.config(docs)["DCPMERGE_HEALTH_ADDRESS"]), ports["health"])
            # One missed probe must not flip readiness.
            self.assertGreater(c["readinessProbe"].get("failureThreshold", 3), 1, o)

    def test_startup_probe(self):
        for o, docs in self.everything.items():
            c = self.container(docs)
            self.assertIn("startupProbe", c, o)
            sp = c["startupProbe"]
            self.assertEqual(sp["grpc"]["port"], self.ports(docs)["health"], o)
            self.assertEqual(sp["grpc"].get("service", ""), "", f"{o}: startup = liveness, not readiness")
            budget = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
            self.assertGreaterEqual(budget, 60, f"{o}: CUDA + NCCL start-up may take a minute")
            # The startup probe covers the start: no liveness delay needed,
            # and liveness must not kill a pod that is merely starting.
            self.assertNotIn("initialDelaySeconds", c["livenessProbe"], o)

    # ------------------------------------------------ pod and resources ---
    def test_resources_gpu_and_grace_period(self):
        for o, docs in self.everything.items():
            spec = self.spec(docs)
            res = spec["containers"][0]["resources"]
            for part in ("requests", "limits"):
                self.assertEqual(res[part].get("nvidia.com/gpu"), 1, f"{o}: {part}")
                self.assertIn("cpu", res[part], o)
                self.assertIn("memory", res[part], o)
            for r, q in res["requests"].items():  # extended resources: requests = limits
                if "/" in r:
                    self.assertEqual(res["limits"].get(r), q, f"{o}: {r}")
            drain_ms = int(self.config(docs)["DCPMERGE_DRAIN_TIMEOUT_MS"])
            self.assertGreater(spec["terminationGracePeriodSeconds"], drain_ms / 1000 + SHUTDOWN_MARGIN_S, o)

    def test_service_links_off(self):
        for o, docs in {**self.everything, "base": self.base}.items():
            spec = self.spec(docs)
            # Service links would inject DCPMERGE_*_PORT variables for a
            # Service named dcpmerge-*: the entrypoint refuses them (exit 2).
            self.assertIs(spec.get("enableServiceLinks"), False, o)
            self.assertIs(spec.get("automountServiceAccountToken"), False, o)

    def test_placement(self):
        for key_ in ("nodeSelector", "affinity", "tolerations"):  # placeholders in the base
            self.assertIn(key_, self.spec(self.base), f"base: no {key_} placeholder")
        self.assertIn({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                      self.spec(self.base)["tolerations"])
        for o, docs in self.everything.items():
            ns, group = self.group_of(docs)
            terms = self.spec(docs)["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            node_terms = [t["podAffinityTerm"] for t in terms
                          if t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"]
            self.assertTrue(node_terms, f"{o}: no preference for the ranks' nodes")
            for t in terms:
                term = t["podAffinityTerm"]
                self.assertEqual(term["namespaceSelector"]["matchLabels"], {"kubernetes.io/metadata.name": ns}, o)
                self.assertEqual(term["labelSelector"]["matchLabels"],
                                 {"dcpmerge.io/client": "rank", "dcpmerge.io/group": group}, o)
            self.assertNotIn("requiredDuringSchedulingIgnoredDuringExecution",
                             self.spec(docs)["affinity"]["podAffinity"], f"{o}: must not wait for room by the ranks")

    def test_pod_disruption_budget(self):
        for o, docs in self.everything.items():
            pdb = self.one(docs, "PodDisruptionBudget")
            self.assertEqual(pdb["apiVersion"], "policy/v1", o)
            labels = self.one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
            for k, v in pdb["spec"]["selector"]["matchLabels"].items():
                self.assertEqual(labels.get(k), v, f"{o}: the PDB does not select the server")
            replicas = self.one(docs, "StatefulSet")["spec"]["replicas"]
            # No voluntary eviction of a serving server ...
            if "maxUnavailable" in pdb["spec"]:
                self.assertEqual(pdb["spec"]["maxUnavailable"], 0, o)
            else:
                self.assertEqual(pdb["spec"]["minAvailable"], replicas, o)
            # ... but an unready one (drained, or group incomplete) never
            # blocks a node drain.
            self.assertEqual(pdb["spec"].get("unhealthyPodEvictionPolicy"), "AlwaysAllow", o)

    def test_metrics_scrape_annotations(self):
        for o, docs in self.everything.items():
            ann = self.one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
            self.assertEqual(ann["prometheus.io/scrape"], "true", o)
            self.assertEqual(int(ann["prometheus.io/port"]), self.ports(docs)["metrics"], o)
            self.assertEqual(ann["prometheus.io/path"], "/metrics", o)

    def test_pod_monitor_is_optional(self):
        # Without the component: no Prometheus Operator kinds, so overlays
        # apply on clusters without its CRDs.
        for o, docs in self.rendered.items():
            self.assertFalse([d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")], o)
        for v, (o, comps) in VARIANTS.items():
            if "../../components/monitoring" not in comps:
                continue
            docs = self.variants[v]
            pm = self.one(docs, "PodMonitor")
            labels = self.one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
            for k, val in pm["spec"]["selector"]["matchLabels"].items():
                self.assertEqual(labels.get(k), val, v)
            for ep in pm["spec"]["podMetricsEndpoints"]:
                self.assertIn(ep["port"], self.ports(docs), v)
                self.assertEqual(ep["path"], "/metrics", v)
            self.assertEqual(pm["metadata"]["namespace"], self.one(docs, "StatefulSet")["metadata"]["namespace"])

    # ------------------------------------------------- Pod Security ---
    def test_pod_security_restricted(self):
        """Every pod template of the base, every overlay and every variant
        meets "restricted" (there is no documented exception: the NCCL
        overlay uses pod networking). The examples' rank pods too."""
        checked = 0
        sources = {**self.everything, "base": self.base, **{f"examples/{f}": d for f, d in self.examples.items()}}
        for o, docs in sources.items():
            for d in docs:
                spec = pod_spec(d)
                if spec is None:
                    continue
                self.assertEqual(pss_violations(spec, pod_annotations(d), "restricted"), [], f"{o}: {key(d)}")
                checked += 1
        self.assertGreaterEqual(checked, len(self.everything) + 1)

    def test_pod_security_checker(self):
        """The checker itself: each rule is caught."""
        good = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                    "sysctls": [{"name": PORT_RANGE_SYSCTL, "value": "40000 40999"}]},
                "containers": [{"name": "c", "ports": [{"containerPort": 1}],
                                "securityContext": {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"],
                                                                     "add": ["NET_BIND_SERVICE"]}}}],
                "volumes": [{"name": "v", "emptyDir": {"medium": "Memory"}}, {"name": "s", "secret": {}}]}
        self.assertEqual(pss_violations(good, {}, "restricted"), [])

        def mutated(fn):
            s = copy.deepcopy(good)
            fn(s)
            return s

        c = lambda s: s["containers"][0]["securityContext"]  # noqa: E731
        baseline_bad = {
            "hostNetwork": lambda s: s.update(hostNetwork=True),
            "hostPID": lambda s: s.update(hostPID=True),
            "hostIPC": lambda s: s.update(hostIPC=True),
            "privileged": lambda s: c(s).update(privileged=True),
            "SYS_ADMIN": lambda s: c(s)["capabilities"].update(add=["SYS_ADMIN"]),
            "IPC_LOCK": lambda s: c(s)["capabilities"].update(add=["IPC_LOCK"]),
            "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
            "hostPort": lambda s: s["containers"][0]["ports"][0].update(hostPort=80),
            "procMount": lambda s: c(s).update(procMount="Unmasked"),
            "seccomp Unconfined": lambda s: c(s).update(seccompProfile={"type": "Unconfined"}),
            "apparmor": lambda s: c(s).update(appArmorProfile={"type": "Unconfined"}),
            "selinux": lambda s: c(s).update(seLinuxOptions={"type": "spc_t"}),
            "unsafe sysctl": lambda s: s["securityContext"]["sysctls"].append({"name": "net.core.somaxconn",
                                                                               "value": "1"}),
            "hostProcess": lambda s: c(s).update(windowsOptions={"hostProcess": True}),
        }
        restricted_only_bad = {
            "escalation": lambda s: c(s).pop("allowPrivilegeEscalation"),
            "root": lambda s: s["securityContext"].pop("runAsNonRoot"),
            "root container": lambda s: c(s).update(runAsNonRoot=False),
            "uid 0": lambda s: c(s).update(runAsUser=0),
            "no seccomp": lambda s: s["securityContext"].pop("seccompProfile"),
            "no drop ALL": lambda s: c(s)["capabilities"].update(drop=["NET_RAW"]),
            "CHOWN": lambda s: c(s)["capabilities"].update(add=["CHOWN"]),
            "nfs": lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        }
        for what, fn in baseline_bad.items():
            self.assertTrue(pss_violations(mutated(fn), {}, "baseline"), f"baseline misses {what}")
            self.assertTrue(pss_violations(mutated(fn), {}, "restricted"), f"restricted misses {what}")
        for what, fn in restricted_only_bad.items():
            self.assertEqual(pss_violations(mutated(fn), {}, "baseline"), [], f"baseline flags {what}")
            self.assertTrue(pss_violations(mutated(fn), {}, "restricted"), f"restricted misses {what}")
        self.assertTrue(pss_violations(good, {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"},
                                       "baseline"))

    # ---------------------------------------------------- NCCL overlay ---
    def test_nccl_overlay(self):
        nccl = {o: d for o, d in self.everything.items() if self.is_nccl(d)}
        self.assertIn("group-c-nccl", nccl, "an overlay must run the NCCL data plane")
        for o, docs in nccl.items():
            cfg = self.config(docs)
            self.assertEqual(cfg["DCPMERGE_BACKEND"], "cuda", f"{o}: NCCL needs the cuda backend")
            self.assertEqual(int(cfg["DCPMERGE_NCCL_DEVICE"]), 0, f"{o}: the pod sees its one GPU as 0")
            fixed = int(cfg.get("DCPMERGE_NCCL_FIXED_TOKENS", "-1"))  # transport/layout.h: 0..max_tokens
            self.assertTrue(fixed == -1 or 0 <= fixed <= int(cfg["DCPMERGE_MAX_TOKENS"]), o)
            env = generated(docs, NCCL_CONFIG)["data"]
            self.assertEqual(env.get("NCCL_NVLS_ENABLE"), "0", f"{o}: NVLink multicast must stay off")
            self.assertTrue(env.get("NCCL_SOCKET_IFNAME"), o)
            self.assertIn(env.get("NCCL_IB_DISABLE"), ("0", "1"), o)
            spec, c = self.spec(docs), self.container(docs)
            self.assertFalse(spec.get("hostNetwork"), f"{o}: pod networking (restricted)")
            # /dev/shm: memory-backed, bounded, within the memory limit.
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            self.assertIn("/dev/shm", mounts, o)
            vol = next(v for v in spec["volumes"] if v["name"] == mounts["/dev/shm"])
            self.assertEqual(vol["emptyDir"].get("medium"), "Memory", o)
            shm = memory_bytes(vol["emptyDir"]["sizeLimit"])
            self.assertGreaterEqual(shm, 1 << 30, f"{o}: /dev/shm of at least 1 GiB")
            self.assertLessEqual(shm * 4, memory_bytes(c["resources"]["limits"]["memory"]),
                                 f"{o}: /dev/shm counts against the memory limit: leave room")
            # NCCL's ports: the pod's ephemeral range, admitted from the
            # group's ranks only, clear of the fixed listeners.
            rng = port_range(spec)
            self.assertIsNotNone(rng, f"{o}: no fixed port range for NCCL")
            first, last = rng
            self.assertTrue(1024 < first < last <= 65535, o)
            self.assertGreaterEqual(last - first + 1, 256, f"{o}: too few ports for NCCL's sockets")
            self.assertNotEqual(first % 2, last % 2, f"{o}: the kernel wants ends of different parity")
            for name, p in self.ports(docs).items():
                self.assertFalse(first <= p <= last, f"{o}: port {name} inside the NCCL range")
            np = self.one(docs, "NetworkPolicy")
            rules = [r for r in np["spec"]["ingress"] if any(p.get("endPort") for p in r["ports"])]
            self.assertEqual(len(rules), 1, o)
            rng_ports = [p for p in rules[0]["ports"] if p.get("endPort")]
            self.assertEqual([(p["port"], p["endPort"], p.get("protocol", "TCP")) for p in rng_ports],
                             [(first, last, "TCP")], f"{o}: NetworkPolicy range != sysctl range")
            ns, group = self.group_of(docs)
            self.assertEqual(rules[0]["from"], [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "podSelector": {"matchLabels": {"dcpmerge.io/client": "rank", "dcpmerge.io/group": group}}}],
                f"{o}: the NCCL range must admit the group's ranks and nobody else")
            # Topology Manager alignment needs Guaranteed QoS: requests =
            # limits for every resource, whole CPUs.
            res = c["resources"]
            self.assertEqual(res["requests"], res["limits"], f"{o}: Guaranteed QoS")
            self.assertRegex(str(res["limits"]["cpu"]), r"^\d+$", f"{o}: whole CPUs")
        for o, docs in self.everything.items():
            if not self.is_nccl(docs):
                self.assertIsNone(port_range(self.spec(docs)), o)
                self.assertNotIn("/dev/shm", {m["mountPath"] for m in self.container(docs)["volumeMounts"]}, o)

    def test_rdma_component(self):
        docs = self.variants["group-c-nccl+rdma"]
        self.assertEqual(generated(docs, NCCL_CONFIG)["data"]["NCCL_IB_DISABLE"], "0")
        self.assertTrue(generated(docs, NCCL_CONFIG)["data"]["NCCL_IB_HCA"])
        res = self.container(docs)["resources"]
        rdma = [r for r in res["limits"] if r.startswith("rdma/")]
        self.assertEqual(len(rdma), 1)
        self.assertEqual(res["requests"][rdma[0]], res["limits"][rdma[0]])
        # Without the component: no RDMA device, IB off.
        plain = self.rendered["group-c-nccl"]
        self.assertEqual(generated(plain, NCCL_CONFIG)["data"]["NCCL_IB_DISABLE"], "1")
        self.assertFalse([r for r in self.container(plain)["resources"]["limits"] if r.startswith("rdma/")])

    # ------------------------------------------------------ references ---
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
        for o, docs in self.everything.items():
            base_overlay = VARIANTS[o][0] if o in VARIANTS else o
            self.check_references(o, docs, docs + self.external[base_overlay])
            env = {e["name"]: e.get("value") for e in self.container(docs)["env"]}
            self.assertIn("DCPMERGE_ADMIN_TOKEN_FILE", env, f"{o}: admin token must come from a file")
            self.assertNotIn("DCPMERGE_ADMIN_TOKEN", env, f"{o}: no token in the pod spec")
            self.assertIn("DCPMERGE_TLS_CERT_FILE", env, o)
        secrets = load_docs(os.path.join(K8S, "examples", "secrets.example.yaml"))
        for f, docs in self.examples.items():
            self.check_references(f"examples/{f}", docs, docs + secrets)

    def test_images_by_digest(self):
        digest = re.compile(r"^sha256:[0-9a-f]{64}$")
        for o in OVERLAYS:
            k = load_docs(os.path.join(K8S, "overlays", o, "kustomization.yaml"))[0]
            self.assertTrue(k.get("images"), f"{o}: no image pin")
            for img in k["images"]:
                self.assertRegex(img.get("digest", ""), digest, f"{o}: {img['name']} not pinned by digest")
                self.assertTrue(img.get("newTag"), f"{o}: keep the tag for people")
        for o, docs in self.everything.items():
            for d in docs:
                for c in containers(d):
                    _, tag, dig = split_image(c["image"])
                    self.assertRegex(dig, digest, f"{o}: {c['image']}")
                    self.assertNotEqual(tag, "latest", o)
        for docs in self.examples.values():
            for d in docs:
                for c in containers(d):
                    self.assertFalse(c["image"].endswith(":latest"))
        for arg in ("BUILD_BASE", "RUNTIME_BASE"):
            img = re.search(r"^ARG %s=(\S+)" % arg, read("deploy", "Dockerfile"), re.M).group(1)
            self.assertIn(":", img)
            self.assertFalse(img.endswith(":latest"), img)

    def test_image_version_labels(self):
        dockerfile = read("deploy", "Dockerfile")
        runtime = dockerfile[dockerfile.index(" AS runtime"):]
        for arg in ("VERSION", "REVISION"):
            self.assertRegex(runtime, r"(?m)^ARG %s(=\S+)?$" % arg, f"runtime stage lacks ARG {arg}")
        labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', runtime))
        self.assertEqual(labels.get("org.opencontainers.image.version"), "${VERSION}")
        self.assertEqual(labels.get("org.opencontainers.image.revision"), "${REVISION}")
        self.assertEqual(labels.get("org.opencontainers.image.licenses"), "Apache-2.0")
        # One release across the groups, and the one the Dockerfile's build
        # example labels.
        tags = {load_docs(os.path.join(K8S, "overlays", o, "kustomization.yaml"))[0]["images"][0]["newTag"]
                for o in OVERLAYS}
        self.assertEqual(len(tags), 1, tags)
        self.assertIn(f"--build-arg VERSION={tags.pop()} ", dockerfile)

    # ------------------------------------------------ network policy ---
    def test_network_policy_keeps_admin_internal(self):
        for o, docs in self.everything.items():
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
            # Rank port: only the group's ranks (namespace + both labels).
            ns, group = self.group_of(docs)
            rank_rules = [r for r in np["spec"]["ingress"] if ports["rank"] in {p["port"] for p in r["ports"]}]
            self.assertEqual(len(rank_rules), 1, o)
            self.assertIs(np["spec"]["ingress"][0], rank_rules[0], f"{o}: ingress[0] must be the rank rule")
            self.assertEqual(rank_rules[0]["from"], [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "podSelector": {"matchLabels": {"dcpmerge.io/client": "rank", "dcpmerge.io/group": group}}}], o)
            np_ns = np["metadata"]["namespace"]
            self.assertFalse(policy_admits(np, np_ns, ns, {"dcpmerge.io/client": "rank",
                                                            "dcpmerge.io/group": group + "-other"}, ports["rank"]),
                             f"{o}: another group's rank is admitted")
            self.assertIn(ports["metrics"], covered, o)

    def test_rank_examples_find_and_reach_the_server(self):
        cases = {"rank-config.yaml": "group-a", "rank-nccl.yaml": "group-c-nccl"}
        for f, overlay in cases.items():
            docs, group = self.examples[f], self.rendered[overlay]
            cm = next(d for d in docs if d["kind"] == "ConfigMap")
            sts, svc = self.one(group, "StatefulSet"), self.one(group, "Service")
            ns = sts["metadata"]["namespace"]
            ports = self.ports(group)
            self.assertEqual(cm["data"]["DCPMERGE_SERVER_TARGET"],
                             f"{sts['metadata']['name']}-0.{svc['metadata']['name']}.{ns}.svc.cluster.local:"
                             f"{ports['rank']}", f)
            self.assertEqual(int(cm["data"]["DCPMERGE_WORLD_SIZE"]), int(self.config(group)["DCPMERGE_WORLD_SIZE"]))
            # The rank pod is admitted by the server's policy on the rank port.
            pod = next(d for d in docs if d["kind"] == "Pod")
            np = self.one(group, "NetworkPolicy")
            pod_ns, labels = pod["metadata"]["namespace"], pod["metadata"]["labels"]
            self.assertTrue(policy_admits(np, ns, pod_ns, labels, ports["rank"]),
                            f"{f}: the rank pod is not admitted by the server's NetworkPolicy")
            self.assertFalse(policy_admits(np, ns, pod_ns, labels, ports["admin"]), f"{f}: rank reaches admin")
            if not self.is_nccl(group):
                continue
            # NCCL: ranks reach the server's range, the server and the other
            # ranks reach the rank's range, and both speak the same NCCL.
            first, last = port_range(self.spec(group))
            for p in (first, last):
                self.assertTrue(policy_admits(np, ns, pod_ns, labels, p), f"{f}: rank cannot reach NCCL port {p}")
            rank_range = port_range(pod["spec"])
            self.assertIsNotNone(rank_range, f"{f}: the rank needs a fixed NCCL port range too")
            rank_np = next(d for d in docs if d["kind"] == "NetworkPolicy")
            server_labels = sts["spec"]["template"]["metadata"]["labels"]
            for p in rank_range:
                self.assertTrue(policy_admits(rank_np, pod_ns, ns, server_labels, p),
                                f"{f}: the server cannot reach the rank's NCCL port {p}")
                self.assertTrue(policy_admits(rank_np, pod_ns, pod_ns, labels, p),
                                f"{f}: the group's ranks cannot reach each other")
            self.assertFalse(policy_admits(rank_np, pod_ns, "elsewhere", server_labels, rank_range[0]), f)
            server_nccl = generated(group, NCCL_CONFIG)["data"]
            for k, v in server_nccl.items():
                self.assertEqual(cm["data"].get(k), v, f"{f}: the rank's {k} differs from the server's")
            mounts = {m["mountPath"] for c in containers(pod) for m in c.get("volumeMounts", [])}
            self.assertIn("/dev/shm", mounts, f)

    # ------------------------------------------------ rank credentials ---
    def secret_file(self, where, spec, container, var):
        """The Secret volume source holding the file that `var` names, and
        the file's name."""
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        self.assertIn(var, env, where)
        directory, _, base = env[var].rpartition("/")
        mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory), None)
        self.assertIsNotNone(mount, f"{where}: {var} not mounted")
        vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        self.assertIn("secret", vol, f"{where}: {var} must come from a Secret")
        return vol["secret"], base

    def test_each_rank_mounts_only_its_own_token(self):
        """The server holds the group's join secret; a rank pod holds its own
        rank token only (key rank-<DCPMERGE_RANK> of its group's rank-token
        Secret, which has one key per rank of the group), never the secret."""
        for o, docs in self.everything.items():
            source, _ = self.secret_file(o, self.spec(docs), self.container(docs), "DCPMERGE_JOIN_SECRET_FILE")
            self.assertEqual([it["key"] for it in source.get("items", [])], ["secret"], o)
        secrets = {d["metadata"]["name"]: d for d in load_docs(os.path.join(K8S, "examples", "secrets.example.yaml"))}
        for f, overlay in {"rank-config.yaml": "group-a", "rank-nccl.yaml": "group-c-nccl"}.items():
            pod = next(d for d in self.examples[f] if d["kind"] == "Pod")
            c = containers(pod)[0]
            rank = int(next(e["value"] for e in c["env"] if e["name"] == "DCPMERGE_RANK"))
            source, base = self.secret_file(f, pod["spec"], c, "DCPMERGE_JOIN_SECRET_FILE")
            self.assertEqual(source.get("items"), [{"key": f"rank-{rank}", "path": base}],
                             f"{f}: mount rank {rank}'s token and nothing else")
            tokens = secrets[source["secretName"]]
            world = int(self.config(self.rendered[overlay])["DCPMERGE_WORLD_SIZE"])
            self.assertEqual(set(tokens.get("stringData", {})) | set(tokens.get("data", {})),
                             {f"rank-{r}" for r in range(world)}, f"{f}: one token per rank of the group")
            for v in pod["spec"]["volumes"]:
                if "secret" in v:
                    held = secrets[v["secret"]["secretName"]]
                    self.assertNotIn("secret", held.get("stringData", {}), f"{f}: a rank holds the group secret")


if __name__ == "__main__":
    unittest.main(verbosity=2)
