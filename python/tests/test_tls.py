"""RankClient and Admin over TLS and mutual TLS, against a server with
certificates made by the openssl CLI (a throwaway CA, as
tests/server/merge_server_tls_test.cc does)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import dcpmerge
from conftest import TOKEN


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    script = f"""set -e; cd {d}
openssl req -x509 {key} -keyout ca.key -out ca.pem -days 1 -subj /CN=dcpmerge-test-ca
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext
openssl req {key} -keyout server.key -out server.csr -subj /CN=localhost
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile san.ext
openssl req {key} -keyout client.key -out client.csr -subj /CN=rank
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1
"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"openssl could not make test certificates: {r.stderr[-300:]}")
    return d


def test_tls_rank_client_and_admin(start_server, certs):
    server = start_server(world_size=1, extra=[f"--tls_cert_file={certs}/server.pem",
                                               f"--tls_key_file={certs}/server.key"])
    o, l = np.zeros((4, 4, 128), np.uint16), np.zeros((4, 4), np.float32)
    with dcpmerge.RankClient(server.target, rank=0, num_parts=1, tls_root_ca_file=str(certs / "ca.pem")) as c:
        c.join()
        assert c.merge(0, 0, o, l).num_tokens == 4
    with dcpmerge.Admin(server.admin_target, token=TOKEN, tls_ca_file=str(certs / "ca.pem")) as admin:
        assert admin.get_config().configured
    # Plaintext against a TLS listener fails with the transport's error.
    with dcpmerge.Admin(server.admin_target, token=TOKEN, deadline=2.0) as admin:
        with pytest.raises(dcpmerge.Error) as e:
            admin.get_config()
        assert e.value.code in (dcpmerge.StatusCode.UNAVAILABLE, dcpmerge.StatusCode.DEADLINE_EXCEEDED)


def test_mutual_tls(start_server, certs):
    server = start_server(world_size=1, extra=[f"--tls_cert_file={certs}/server.pem",
                                               f"--tls_key_file={certs}/server.key",
                                               f"--tls_client_ca_file={certs}/ca.pem"])
    o, l = np.zeros((4, 4, 128), np.uint16), np.zeros((4, 4), np.float32)
    with dcpmerge.RankClient(server.target, rank=0, num_parts=1, tls_root_ca_file=str(certs / "ca.pem"),
                             tls_client_cert_file=str(certs / "client.pem"),
                             tls_client_key_file=str(certs / "client.key")) as c:
        c.join()
        assert c.merge(0, 0, o, l).num_tokens == 4
    with dcpmerge.Admin(server.admin_target, token=TOKEN, tls_ca_file=str(certs / "ca.pem"),
                        tls_cert_file=str(certs / "client.pem"), tls_key_file=str(certs / "client.key")) as admin:
        assert admin.get_config().configured
    # Without a client certificate the handshake is refused.
    with dcpmerge.RankClient(server.target, rank=0, num_parts=1, tls_root_ca_file=str(certs / "ca.pem"),
                             rpc_timeout=2.0) as c:
        with pytest.raises(dcpmerge.Error) as e:
            c.join()
        assert e.value.code in (dcpmerge.StatusCode.UNAVAILABLE, dcpmerge.StatusCode.DEADLINE_EXCEEDED)
