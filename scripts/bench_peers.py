#!/usr/bin/env python3
"""The peers of bench_gpu_kernels on the GPU machine (issues 8 and 9), at the same shapes.

  python3 scripts/bench_peers.py [--json PATH] [--filter SUBSTR] [--iters N]
                                 [--peak-tflops 790] [--peak-gbs 3000]

- attention: torch.nn.functional.scaled_dot_product_attention on the flash backend, causal,
  bf16, Hq = 16, Hkv = 4, d = 128 (enable_gqa; where the flash backend refuses it, K and V are
  expanded to 16 heads before the timed region, and the row says so).
- LSM: flash-linear-attention (PyPI flash-linear-attention / fla-core; not a project
  dependency) chunk kernels, [B, T, H, d] layout, bf16, no initial/final state:
    lsm_scalar_decay     fla.ops.simple_gla.chunk_simple_gla(q, k, v, g=[B,T,H])
    lsm_vector_decay     fla.ops.gla.chunk_gla(q, k, v, g=[B,T,H,K])
    lsm_delta_rule       fla.ops.delta_rule.chunk_delta_rule(q, k, v, beta)
    lsm_gated_delta_rule fla.ops.gated_delta_rule.chunk_gated_delta_rule(q, k, v, g, beta)
  q, k L2-normalised outside the call for the delta rules (as linmoe's layer does).

Passes: fwd (under torch.no_grad), bwd (torch.autograd.grad of a kept graph, retain_graph), and
fwd+bwd. Timing as bench_gpu_kernels: one warm-up call (Triton autotuning and compilation),
one call that sizes the batch, then 5 batches of N calls between synchronisations (CUDA events
around each batch); time = median batch / N. FLOP and byte formulas are bench_gpu_kernels'
(see its header), so the rows join on (op, pass, shape, dtype). A missing package or a failing
call skips the row with a message; the script never fails for that.
"""
import argparse
import importlib
import inspect
import json
import sys

CHUNK = 64  # linmoe's LSM chunk; the FLOP model counts with it for both sides

ATTN_SHAPES = [(8, 2048), (2, 8192), (1, 16384), (1, 8192), (1, 32768)]  # (B, T)
LSM_SHAPES = [(8, 2048, 8), (8, 2048, 16), (8, 8192, 8), (8, 8192, 16)]  # (B, T, H)
HQ, HKV, D = 16, 4, 128

LSM_FAMILIES = [
    # op, fla module, function, delta rule, gate shape ("head" [B,T,H], "key" [B,T,H,K], None)
    ("lsm_scalar_decay", "fla.ops.simple_gla", "chunk_simple_gla", False, "head"),
    ("lsm_vector_decay", "fla.ops.gla", "chunk_gla", False, "key"),
    ("lsm_delta_rule", "fla.ops.delta_rule", "chunk_delta_rule", True, None),
    ("lsm_gated_delta_rule", "fla.ops.gated_delta_rule", "chunk_gated_delta_rule", True, "head"),
]


def attn_cost(B, T):
    """FLOPs and bytes of causal GQA attention, bench_gpu_kernels' formulas."""
    pairs = 0.5 * T * (T + 1)
    es = 2.0
    tok = B * T * D * es
    ff, fb = 4.0 * B * HQ * D * pairs, 10.0 * B * HQ * D * pairs
    bf = tok * (2 * HQ + 2 * HKV) + 4.0 * B * HQ * T
    bb = tok * (4 * HQ + 4 * HKV) + 8.0 * B * HQ * T
    return {"fwd": (ff, bf), "bwd": (fb, bb), "fwd+bwd": (ff + fb, bf + bb)}


def lsm_cost(B, T, H, delta, gate):
    th, C, es = float(B * T * H), float(CHUNK), 2.0
    if delta:
        ff, fb = th * (10 * C * D + 6.0 * D * D), th * (20 * C * D + 12.0 * D * D)
    else:
        ff, fb = th * (4 * C * D + 4.0 * D * D), th * (10 * C * D + 10.0 * D * D)
    x = th * D * es
    gates = (th * D if gate == "key" else th if gate == "head" else 0.0) * es
    gates += th * es if delta else 0.0
    bf, bb = 4 * x + gates, 7 * x + 2 * gates
    return {"fwd": (ff, bf), "bwd": (fb, bb), "fwd+bwd": (ff + fb, bf + bb)}


class Bench:
    def __init__(self, torch, args):
        self.torch, self.args, self.rows = torch, args, []

    def wanted(self, op, pass_, shape):
        f = self.args.filter
        return not f or f in f"{op} {pass_} {shape} bf16"

    def timeit(self, fn):
        torch = self.torch
        fn()  # warm-up: compilation, autotuning
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        call_ms = max(s.elapsed_time(e), 1e-3)
        n = self.args.iters or max(1, min(1000, int(20.0 / call_ms)))
        us = []
        for _ in range(5):
            s.record()
            for _ in range(n):
                fn()
            e.record()
            torch.cuda.synchronize()
            us.append(1000.0 * s.elapsed_time(e) / n)
        us.sort()
        return us[len(us) // 2], us[0], n

    def row(self, impl, op, pass_, shape, flops, bytes_, fn, note=""):
        r = {"impl": impl, "op": op, "pass": pass_, "shape": shape, "dtype": "bf16",
             "flops": flops, "bytes": bytes_, "note": note, "failed": False}
        try:
            us, min_us, n = self.timeit(fn)
            tflops, gbs = flops / (us * 1e6), bytes_ / (us * 1e3)
            r.update(us=us, min_us=min_us, iters=n, tflops=tflops, gbs=gbs,
                     pct_peak_flops=100.0 * tflops / self.args.peak_tflops,
                     pct_peak_bw=100.0 * gbs / self.args.peak_gbs)
            print(f"{impl:<10} {op:<22} {pass_:<8} {shape:<40} {us:10.1f} {min_us:10.1f} "
                  f"{tflops:8.1f} {gbs:8.0f} {r['pct_peak_flops']:6.1f}% {r['pct_peak_bw']:6.1f}%  "
                  f"{note}", flush=True)
        except Exception as ex:  # a failing call skips the row
            r.update(failed=True, note=f"FAILED: {type(ex).__name__}: {ex}"[:300])
            print(f"{impl:<10} {op:<22} {pass_:<8} {shape:<40} {r['note']}", flush=True)
            self.torch.cuda.empty_cache()
        self.rows.append(r)

    def passes(self, impl, op, shape, cost, fwd, make_graph, grad_inputs, note=""):
        """fwd: () -> out under no_grad; make_graph: () -> out with autograd."""
        torch = self.torch
        if self.wanted(op, "fwd", shape):
            def f():
                with torch.no_grad():
                    fwd()
            self.row(impl, op, "fwd", shape, *cost["fwd"], f, note)
        if self.wanted(op, "bwd", shape) or self.wanted(op, "fwd+bwd", shape):
            try:
                out = make_graph()
                dout = torch.randn_like(out)
            except Exception as ex:
                print(f"{impl:<10} {op:<22} {'bwd':<8} {shape:<40} FAILED: {ex}", flush=True)
                return
            if self.wanted(op, "bwd", shape):
                self.row(impl, op, "bwd", shape, *cost["bwd"],
                         lambda: torch.autograd.grad(out, grad_inputs, dout, retain_graph=True),
                         note)
            del out
            if self.wanted(op, "fwd+bwd", shape):
                self.row(impl, op, "fwd+bwd", shape, *cost["fwd+bwd"],
                         lambda: torch.autograd.grad(make_graph(), grad_inputs, dout), note)


def bench_sdpa(b, torch):
    F = torch.nn.functional
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as ex:
        print(f"skipping scaled_dot_product_attention: {ex}")
        return
    for B, T in ATTN_SHAPES:
        shape = f"B={B} T={T} Hq={HQ} Hkv={HKV} d={D} causal"
        if not any(b.wanted("attention", p, shape) for p in ("fwd", "bwd", "fwd+bwd")):
            continue
        dev, dt = "cuda", torch.bfloat16
        q = torch.randn(B, HQ, T, D, device=dev, dtype=dt, requires_grad=True)
        k = torch.randn(B, HKV, T, D, device=dev, dtype=dt, requires_grad=True)
        v = torch.randn(B, HKV, T, D, device=dev, dtype=dt, requires_grad=True)

        def call(q_, k_, v_, gqa):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                if gqa:
                    return F.scaled_dot_product_attention(q_, k_, v_, is_causal=True,
                                                          enable_gqa=True)
                return F.scaled_dot_product_attention(q_, k_, v_, is_causal=True)

        note, kk, vv, gqa = "flash backend, enable_gqa", k, v, True
        try:
            with torch.no_grad():
                call(q, k, v, True)
        except Exception as ex:  # older torch or flash refusing GQA: expand K, V
            rep = HQ // HKV
            kk = k.detach().repeat_interleave(rep, dim=1).requires_grad_()
            vv = v.detach().repeat_interleave(rep, dim=1).requires_grad_()
            note, gqa = f"flash backend, K/V expanded to {HQ} heads ({type(ex).__name__})", False
        b.passes("torch_sdpa", "attention", shape, attn_cost(B, T),
                 lambda: call(q, kk, vv, gqa), lambda: call(q, kk, vv, gqa), [q, kk, vv], note)
        del q, k, v, kk, vv
        torch.cuda.empty_cache()


def bench_fla(b, torch):
    F = torch.nn.functional
    for op, mod_name, fn_name, delta, gate in LSM_FAMILIES:
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except Exception as ex:
            print(f"skipping {op} (fla {mod_name}.{fn_name}): {type(ex).__name__}: {ex}")
            continue
        params = inspect.signature(fn).parameters
        for B, T, H in LSM_SHAPES:
            shape = f"B={B} T={T} H={H} d={D}"
            if not any(b.wanted(op, p, shape) for p in ("fwd", "bwd", "fwd+bwd")):
                continue
            dev, dt = "cuda", torch.bfloat16

            def leaf(x):
                return x.detach().to(dt).requires_grad_()

            q = torch.rand(B, T, H, D, device=dev) * 2 - 1
            k = torch.rand(B, T, H, D, device=dev) * 2 - 1
            if delta:
                q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            q, k = leaf(q), leaf(k)
            v = leaf(torch.rand(B, T, H, D, device=dev) * 2 - 1)
            kw = {"scale": D ** -0.5}
            if "head_first" in params:
                kw["head_first"] = False
            if "output_final_state" in params:
                kw["output_final_state"] = False
            inputs = [q, k, v]
            if gate is not None:
                gshape = (B, T, H, D) if gate == "key" else (B, T, H)
                kw["g"] = leaf(torch.empty(gshape, device=dev).uniform_(-0.1, -0.001))
                inputs.append(kw["g"])
            if delta:
                kw["beta"] = leaf(torch.empty(B, T, H, device=dev).uniform_(0.1, 0.9))
                inputs.append(kw["beta"])

            def call():
                out = fn(q=q, k=k, v=v, **kw)
                return out[0] if isinstance(out, tuple) else out

            b.passes("fla", op, shape, lsm_cost(B, T, H, delta, gate), call, call, inputs,
                     f"fla {fn_name}")
            del q, k, v, inputs, kw
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="")
    ap.add_argument("--filter", default="")
    ap.add_argument("--iters", type=int, default=0, help="calls per batch (0: ~20 ms each)")
    ap.add_argument("--peak-tflops", type=float, default=790.0)
    ap.add_argument("--peak-gbs", type=float, default=3000.0)
    args = ap.parse_args()
    try:
        import torch
    except ImportError as ex:
        print(f"bench_peers: PyTorch is not installed ({ex}); nothing to run")
        return 0
    if not torch.cuda.is_available():
        print("bench_peers: no CUDA device is available on this machine; nothing to run")
        return 0
    versions = {"torch": torch.__version__}
    for name in ("triton", "fla"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as ex:
            versions[name] = f"missing ({type(ex).__name__})"
    device = torch.cuda.get_device_name(0)
    print(f"peers on {device}; {versions}; peaks {args.peak_tflops} TFLOP/s bf16, "
          f"{args.peak_gbs} GB/s")
    print(f"\n{'impl':<10} {'op':<22} {'pass':<8} {'shape':<40} {'us':>10} {'min us':>10} "
          f"{'TFLOP/s':>8} {'GB/s':>8} {'%peakF':>7} {'%peakBW':>7}  note")
    torch.manual_seed(0)
    b = Bench(torch, args)
    bench_sdpa(b, torch)
    bench_fla(b, torch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "bench_peers", "device": device, "versions": versions,
                       "peak_tflops_bf16": args.peak_tflops, "peak_gbs": args.peak_gbs,
                       "rows": b.rows}, f, indent=1)
        print(f"\nwrote {len(b.rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
