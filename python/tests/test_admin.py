"""Admin against a real dcpmerge_server: get_config, set_scales, stats,
drain, configure; tokens; bad input; a killed server."""

from __future__ import annotations

import time

import numpy as np
import pytest

import dcpmerge
from conftest import TOKEN, run_ranks

T, H, D = 4, 4, 128


def test_get_config_stats_set_scales(start_server):
    server = start_server(world_size=2, extra=["--default_scale=0.5"])
    with dcpmerge.Admin(server.admin_target, token=TOKEN) as admin:
        cfg = admin.get_config()
        assert cfg.configured and cfg.backend == "cpu" and cfg.data_plane == "grpc" and not cfg.draining
        assert cfg.config == dcpmerge.GroupConfig(world_size=2, num_heads=4, head_size=128, max_tokens=16,
                                                  input_dtype="bf16", lse_base="e", lse_layout="heads_tokens",
                                                  output_mode="fp8_per_tensor", group_size=128,
                                                  power_of_two_scales=False, return_mode="full",
                                                  return_lse=False)
        assert cfg.default_scale == 0.5 and cfg.layer_scales == {} and cfg.members == [] and not cfg.group_ready
        v1 = cfg.config_version
        v2 = admin.set_scales({0: 0.1, 3: 0.2})
        assert v2 > v1
        v3 = admin.set_scales({4: 0.3}, default_scale=0.25)
        cfg = admin.get_config()
        assert cfg.config_version == v3 > v2
        assert cfg.layer_scales == {0: pytest.approx(0.1), 3: pytest.approx(0.2), 4: pytest.approx(0.3)}
        assert cfg.default_scale == 0.25
        admin.set_scales({3: 0.5}, replace=True)
        assert admin.get_config().layer_scales == {3: 0.5}
        stats = admin.stats()
        assert stats.steps_ok == 0 and stats.steps_failed == 0 and stats.total.count == 0

        def rank(r):
            with dcpmerge.RankClient(server.target, rank=r, num_parts=2) as c:
                c.join()
                c.wait_ready(10)
                for step in range(3):
                    c.merge(step, 3, np.zeros((T, H, D), np.uint16), np.zeros((H, T), np.float32))

        run_ranks(2, rank)
        stats = admin.stats()
        assert stats.steps_ok == 3 and stats.steps_in_flight == 0
        assert stats.bytes_in == 3 * 2 * (T * H * D * 2 + T * H * 4)
        assert stats.merge.count == 3 and stats.total.p50_us > 0


@pytest.mark.parametrize("bad,exc,needle", [
    (dict(scales={0: 0.0}), ValueError, "scales[0]"),
    (dict(scales={0: -1.0}), ValueError, "scales[0]"),
    (dict(scales={0: float("nan")}), ValueError, "scales[0]"),
    (dict(scales={0: float("inf")}), ValueError, "scales[0]"),
    (dict(scales={-1: 1.0}), ValueError, "layer -1"),
    (dict(scales={"0": 1.0}), TypeError, "layer"),
    (dict(scales={0: "1"}), TypeError, "scales[0]"),
    (dict(scales={}), ValueError, "nothing to set"),
    (dict(scales={0: 1.0}, default_scale=0.0), ValueError, "default_scale"),
])
def test_set_scales_bad_input(start_server, bad, exc, needle):
    server = start_server(world_size=1)
    with dcpmerge.Admin(server.admin_target, token=TOKEN) as admin:
        before = admin.get_config().config_version
        with pytest.raises(exc) as e:
            admin.set_scales(bad.pop("scales"), **bad)
        assert needle in str(e.value)
        assert admin.get_config().config_version == before  # nothing was sent


def test_constructor_bad_input(tmp_path):
    with pytest.raises(ValueError, match="address"):
        dcpmerge.Admin("")
    with pytest.raises(ValueError, match="token, token_file"):
        dcpmerge.Admin("127.0.0.1:1", token="a", token_file="b")
    with pytest.raises(ValueError, match="token_file"):
        dcpmerge.Admin("127.0.0.1:1", token_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="deadline"):
        dcpmerge.Admin("127.0.0.1:1", deadline=0)
    with pytest.raises(ValueError, match="tls_cert_file"):
        dcpmerge.Admin("127.0.0.1:1", tls_cert_file="x")


def test_tokens(start_server, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    server = start_server(world_size=1, token_file=str(token_file))
    monkeypatch.delenv("DCPMERGE_ADMIN_TOKEN", raising=False)
    with dcpmerge.Admin(server.admin_target) as admin:
        with pytest.raises(dcpmerge.Error) as e:
            admin.get_config()
        assert e.value.code is dcpmerge.StatusCode.UNAUTHENTICATED
    with dcpmerge.Admin(server.admin_target, token="wrong") as admin:
        with pytest.raises(dcpmerge.Error) as e:
            admin.stats()
        assert e.value.code is dcpmerge.StatusCode.PERMISSION_DENIED
    monkeypatch.setenv("DCPMERGE_ADMIN_TOKEN", "first-token")
    with dcpmerge.Admin(server.admin_target) as admin:
        assert admin.get_config().configured
    client_file = tmp_path / "client-token"
    client_file.write_text("first-token\n")
    with dcpmerge.Admin(server.admin_target, token_file=str(client_file)) as admin:
        assert admin.get_config().configured
        # Rotation: the server re-reads its file on SIGHUP, the client before every call.
        token_file.write_text("second-token\n")
        client_file.write_text("second-token\n")
        server.proc.send_signal(1)  # SIGHUP
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.get_config()
                break
            except dcpmerge.Error as e:
                assert e.code is dcpmerge.StatusCode.PERMISSION_DENIED
                assert time.monotonic() < deadline, "the rotated token was not accepted"
                time.sleep(0.05)
        client_file.write_text("")
        with pytest.raises(dcpmerge.Error) as e:
            admin.get_config()
        assert e.value.code is dcpmerge.StatusCode.INVALID_ARGUMENT and "empty" in e.value.message


def test_drain_and_configure(start_server):
    server = start_server(world_size=1)
    with dcpmerge.Admin(server.admin_target, token=TOKEN) as admin, \
            dcpmerge.RankClient(server.target, rank=0, num_parts=1) as c:
        c.join()
        o, l = np.zeros((T, H, D), np.uint16), np.zeros((H, T), np.float32)
        c.merge(0, 0, o, l)
        d = admin.drain(timeout=2.0)
        assert d.drained and d.steps_in_flight == 0
        assert admin.get_config().draining
        with pytest.raises(dcpmerge.Error) as e:
            c.merge(1, 0, o, l)
        assert e.value.code is dcpmerge.StatusCode.UNAVAILABLE and "draining" in e.value.message
        version, chash = admin.configure(output_mode="fp8_per_token")
        cfg = admin.get_config()
        assert not cfg.draining and cfg.config_version == version and cfg.config_hash == chash
        assert cfg.config.output_mode == "fp8_per_token"
        with pytest.raises(TypeError, match="unknown field"):
            admin.configure(output="x")
        with pytest.raises(ValueError, match="output_mode"):
            admin.configure(output_mode="fp4")
        with pytest.raises(dcpmerge.Error) as e:
            admin.configure(num_heads=0)  # the server refuses it
        assert e.value.code is dcpmerge.StatusCode.INVALID_ARGUMENT


def test_killed_server_unavailable_within_deadline(start_server):
    server = start_server(world_size=1)
    with dcpmerge.Admin(server.admin_target, token=TOKEN, deadline=3.0) as admin:
        admin.get_config()
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(dcpmerge.Error) as e:
            admin.get_config()
        assert e.value.code is dcpmerge.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 3.5
    admin.close()
    with pytest.raises(dcpmerge.Error) as e:
        admin.stats()
    assert e.value.code is dcpmerge.StatusCode.FAILED_PRECONDITION
