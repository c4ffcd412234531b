"""RankClient on the gRPC data plane against a real dcpmerge_server process:
results equal the CPU reference, scale updates land at the next step, bad
input raises the documented exception, a killed server raises
Error(UNAVAILABLE) within the deadline, the context manager leaves cleanly."""

from __future__ import annotations

import time

import numpy as np
import pytest

import dcpmerge
from conftest import TOKEN, run_ranks
from dcpmerge.reference import float_to_bf16, merge_reference
from test_reference import fp8_step

T, H, D = 8, 4, 128


def parts_for(step, n, T=T, H=H, D=D, layout="heads_tokens", dtype="bf16"):
    rng = np.random.default_rng(1000 + step)
    outs, lses = [], []
    for _ in range(n):
        x = rng.standard_normal((T, H, D)).astype(np.float32)
        outs.append(float_to_bf16(x) if dtype == "bf16" else x.astype(np.float16 if dtype == "fp16" else np.float32))
        lse = (rng.standard_normal((H, T) if layout == "heads_tokens" else (T, H)) * 2).astype(np.float32)
        lse[rng.random(lse.shape) < 0.1] = -np.inf
        lses.append(lse)
    return outs, lses


def client(server, rank, n, **kw):
    kw.setdefault("merge_timeout", 20.0)
    return dcpmerge.RankClient(server.target, rank=rank, num_parts=n, **kw)


def test_merge_equals_cpu_reference_every_rank(start_server):
    n = 3
    server = start_server(world_size=n, extra=["--default_scale=0.05"])
    steps = range(4)

    def rank(r):
        out = []
        with client(server, r, n) as c:
            s = c.join()
            assert s.data_plane == "grpc" and s.config.world_size == n and s.config.input_dtype == "bf16"
            c.wait_ready(10)
            for step in steps:
                outs, lses = parts_for(step, n)
                out.append(c.merge(step, 0, outs[r], lses[r]))
        return out

    results = run_ranks(n, rank)
    for step in steps:
        outs, lses = parts_for(step, n)
        cpu = dcpmerge.merge_states_cpu(outs, lses, scale=0.05)
        ref, _ = merge_reference(np.stack(outs), np.stack(lses), dtype="bf16")
        for r in range(n):
            res = results[r][step]
            assert (res.step, res.layer, res.num_tokens, res.head_begin, res.head_count) == (step, 0, T, 0, H)
            assert res.output.dtype == np.uint8 and res.output.shape == (T, H, D)
            assert np.array_equal(res.output, cpu.output), "differs from MergeOnCpu"
            assert res.scales.tolist() == [pytest.approx(0.05)]
            tol = fp8_step(ref / 0.05) * 0.05 + 1e-6  # within one FP8 step of the float64 merge
            assert np.all(np.abs(res.dequantize() - ref) <= tol)


@pytest.mark.parametrize("mode", ["fp8_per_token", "fp8_per_group", "passthrough"])
def test_dynamic_modes_head_slice_and_lse(start_server, mode):
    n = 2
    server = start_server(world_size=n, extra=[f"--output_mode={mode}", "--group_size=64",
                                               "--return_mode=head_slice", "--return_lse",
                                               "--lse_layout=tokens_heads", "--input_dtype=fp16"])
    outs, lses = parts_for(7, n, layout="tokens_heads", dtype="fp16")

    def rank(r):
        with client(server, r, n) as c:
            c.join()
            c.wait_ready(10)
            return c.merge(7, 3, outs[r], lses[r])

    results = run_ranks(n, rank)
    cpu = dcpmerge.merge_states_cpu(outs, lses, lse_layout="tokens_heads", output_mode=mode, group_size=64,
                                    return_lse=True)
    for r, res in enumerate(results):
        hb, hc = r * H // n, H // n
        assert (res.head_begin, res.head_count) == (hb, hc)
        assert np.array_equal(res.output, cpu.output[:, hb:hb + hc])
        assert np.array_equal(res.lse, cpu.lse[:, hb:hb + hc])
        if mode == "fp8_per_token":
            assert res.scales.shape == (T,)  # per token over all heads: the same on every rank
            assert np.array_equal(res.scales, cpu.scales)
        elif mode == "fp8_per_group":
            assert np.array_equal(res.scales, cpu.scales[:, hb:hb + hc])
        else:
            assert res.output.dtype == np.float16 and res.scales.size == 0


def test_scale_update_lands_at_next_step(start_server):
    n = 2
    server = start_server(world_size=n, extra=["--default_scale=0.05"])
    admin = dcpmerge.Admin(server.admin_target, token=TOKEN)
    seen = {}

    def rank(r):
        with client(server, r, n) as c:
            c.join()
            c.wait_ready(10)
            out = []
            for step in range(4):
                outs, lses = parts_for(step, n)
                res = c.merge(step, 5, outs[r], lses[r])
                out.append(res)
                if step == 1:
                    # Both ranks finished step 1 before either sends step 2?
                    # Not needed: rank 0 updates the scale after its step 1
                    # and before its step 2, and a step pins its config when
                    # its first part arrives; so wait for rank 0's update.
                    if r == 0:
                        seen["version"] = admin.set_scales({5: 0.25})
                    else:
                        deadline = time.monotonic() + 10
                        while "version" not in seen and time.monotonic() < deadline:
                            time.sleep(0.005)
            return out

    results = run_ranks(n, rank)
    v = seen["version"]
    for res in results:
        assert [x.scales[0] for x in res] == [pytest.approx(0.05)] * 2 + [pytest.approx(0.25)] * 2
        assert res[1].config_version < v and res[2].config_version == v and res[3].config_version == v
    outs, lses = parts_for(2, n)
    assert np.array_equal(results[0][2].output, dcpmerge.merge_states_cpu(outs, lses, scale=0.25).output)
    assert admin.get_config().layer_scales == {5: pytest.approx(0.25)}
    admin.close()


def test_bad_input_raises_documented_exceptions(start_server, tmp_path):
    server = start_server(world_size=1)
    with pytest.raises(ValueError, match="rank"):
        dcpmerge.RankClient(server.target, rank=2, num_parts=2)
    with pytest.raises(ValueError, match="num_parts"):
        dcpmerge.RankClient(server.target, rank=0, num_parts=0)
    with pytest.raises(TypeError, match="rank"):
        dcpmerge.RankClient(server.target, rank="0", num_parts=2)
    with pytest.raises(ValueError, match="target"):
        dcpmerge.RankClient("", rank=0, num_parts=1)
    with pytest.raises(ValueError, match="join_secret"):
        dcpmerge.RankClient(server.target, rank=0, num_parts=1, join_secret="a", join_secret_file="b")
    with pytest.raises(ValueError, match="join_secret_file"):
        dcpmerge.RankClient(server.target, rank=0, num_parts=1, join_secret_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="tls_root_ca_file"):
        dcpmerge.RankClient(server.target, rank=0, num_parts=1, tls_root_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="tls_client_cert_file"):
        dcpmerge.RankClient(server.target, rank=0, num_parts=1, tls_client_cert_file=str(tmp_path / "c"))
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    with client(server, 0, 1, join_secret_file=str(secret)) as c:
        with pytest.raises(dcpmerge.Error) as e:  # not joined yet
            c.merge(0, 0, np.zeros((T, H, D), np.uint16), np.zeros((H, T), np.float32))
        assert e.value.code is dcpmerge.StatusCode.FAILED_PRECONDITION
        with pytest.raises(dcpmerge.Error) as e:
            c.session
        assert e.value.code is dcpmerge.StatusCode.FAILED_PRECONDITION
        c.join()
        good_o, good_l = np.zeros((T, H, D), np.uint16), np.zeros((H, T), np.float32)
        cases = [
            (dict(output=np.zeros((T, H, D), np.float16)), TypeError, "output: dtype fp16"),
            (dict(output=np.zeros((T, H, D), np.float64)), TypeError, "output: dtype float64"),
            (dict(output=[[0.0]]), TypeError, "output"),
            (dict(output=np.zeros((T, H + 1, D), np.uint16)), ValueError, "output: shape"),
            (dict(output=np.zeros((17, H, D), np.uint16), lse=np.zeros((H, 17), np.float32)), ValueError,
             "max_tokens"),
            (dict(output=np.zeros((T, H, 2 * D), np.uint16)[:, :, ::2]), ValueError, "C-contiguous"),
            (dict(lse=np.zeros((T, H), np.float32)), ValueError, "lse: shape"),
            (dict(lse=np.zeros((H, T), np.float64)), TypeError, "lse: dtype"),
            (dict(step=-1), ValueError, "step"),
            (dict(layer=1.5), TypeError, "layer"),
            (dict(out=np.zeros(1)), ValueError, "out"),
        ]
        for bad, exc, needle in cases:
            kw = dict(step=0, layer=0, output=good_o, lse=good_l)
            kw.update(bad)
            with pytest.raises(exc) as e:
                c.merge(kw.pop("step"), kw.pop("layer"), kw.pop("output"), kw.pop("lse"), **kw)
            assert needle in str(e.value), (bad, str(e.value))
        # The good step still works after all that: nothing was sent.
        res = c.merge(0, 0, good_o, good_l)
        assert res.num_tokens == T


def test_server_rejects_a_bad_step_for_every_rank(start_server):
    n = 2
    server = start_server(world_size=n)

    def rank(r):
        with client(server, r, n) as c:
            c.join()
            c.wait_ready(10)
            tokens = 4 if r == 0 else 5  # ranks disagree on num_tokens
            with pytest.raises(dcpmerge.Error) as e:
                c.merge(0, 0, np.zeros((tokens, H, D), np.uint16), np.zeros((H, tokens), np.float32))
            return e.value

    for err in run_ranks(n, rank):
        assert err.code is dcpmerge.StatusCode.INVALID_ARGUMENT
        assert "num_tokens" in err.message


def test_killed_server_raises_unavailable_within_deadline(start_server):
    server = start_server(world_size=1)
    with client(server, 0, 1, merge_timeout=10.0, rpc_timeout=2.0) as c:
        c.join()
        o, l = np.zeros((T, H, D), np.uint16), np.zeros((H, T), np.float32)
        c.merge(0, 0, o, l)
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(dcpmerge.Error) as e:
            c.merge(1, 0, o, l)
        assert e.value.code is dcpmerge.StatusCode.UNAVAILABLE, e.value
        assert time.monotonic() - t0 < 10.0
        # Heartbeats see it too (period: the server's heartbeat interval).
        deadline = time.monotonic() + 8
        while c.heartbeat_error() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.heartbeat_error() is not None
        assert c.heartbeat_error().code in (dcpmerge.StatusCode.UNAVAILABLE, dcpmerge.StatusCode.DEADLINE_EXCEEDED)
    # A server that is not there at all: join gives up after rpc_timeout.
    t0 = time.monotonic()
    with client(server, 0, 1, rpc_timeout=1.0) as c:
        with pytest.raises(dcpmerge.Error) as e:
            c.join()
    assert e.value.code in (dcpmerge.StatusCode.UNAVAILABLE, dcpmerge.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - t0 < 5.0


def test_context_manager_leaves_and_close_is_idempotent(start_server):
    server = start_server(world_size=2)
    admin = dcpmerge.Admin(server.admin_target, token=TOKEN)
    with client(server, 1, 2, device="cuda:7") as c:
        s = c.join()
        assert s.session_id != 0 and s.heartbeat_interval_ms > 0
        members = admin.get_config().members
        assert [(m.rank, m.device) for m in members] == [(1, "cuda:7")]
        with pytest.raises(dcpmerge.Error) as e:
            c.wait_ready(0.3)  # rank 0 never joins
        assert e.value.code is dcpmerge.StatusCode.DEADLINE_EXCEEDED
        assert c.heartbeat_error() is None
        assert c.last_config_version >= 0
    assert admin.get_config().members == []
    c.close()  # again: nothing happens
    with pytest.raises(dcpmerge.Error) as e:
        c.join()
    assert e.value.code is dcpmerge.StatusCode.FAILED_PRECONDITION
    # leave() then join() again: a new session.
    with client(server, 0, 2) as c:
        first = c.join().session_id
        c.leave()
        assert admin.get_config().members == []
        assert c.join().session_id != first
    admin.close()


def test_cuda_tensor_on_grpc_plane_and_host_array_checks(start_server):
    server = start_server(world_size=1)
    with client(server, 0, 1) as c:
        c.join()
        with pytest.raises(dcpmerge.Error) as e:
            c.connect_device(0)
        assert e.value.code is dcpmerge.StatusCode.FAILED_PRECONDITION and "gRPC data plane" in e.value.message


def test_join_secret_is_required_and_checked(start_server, tmp_path):
    """A server with a join secret: the right one (from a file or given
    directly) joins and merges; none gets UNAUTHENTICATED, a wrong one
    PERMISSION_DENIED, each from join() as dcpmerge.Error."""
    secret = tmp_path / "join-secret"
    secret.write_text("group-a-secret\n")
    server = start_server(world_size=1, extra=[f"--join_secret_file={secret}"])
    for kw, code in [(dict(), dcpmerge.StatusCode.UNAUTHENTICATED),
                     (dict(join_secret="not-the-secret"), dcpmerge.StatusCode.PERMISSION_DENIED)]:
        with client(server, 0, 1, **kw) as c:
            with pytest.raises(dcpmerge.Error) as e:
                c.join()
            assert e.value.code is code, e.value
            assert "authorization" in e.value.message
    for kw in [dict(join_secret_file=str(secret)), dict(join_secret="group-a-secret")]:
        with client(server, 0, 1, **kw) as c:
            c.join()
            c.wait_ready()
            out = c.merge(0, 0, np.zeros((T, H, D), np.uint16), np.zeros((H, T), np.float32))
            assert out.output.shape == (T, H, D)
