# Copied unchanged from the project's shared/calib/dit_ceiling.py so that it travels to the GPU machine.
"""Ceiling check: time a Wan2.1-1.3B-shaped causal DiT chunk step on the GPU (random weights).
Timing does not depend on weight values; this is the physical anchor for the real-time goal."""
import math, time, torch, torch.nn as nn, torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = True
dev, dt = "cuda", torch.bfloat16

class Block(nn.Module):
    def __init__(s, d=1536, h=12, ffn=8960, ctx=512):
        super().__init__(); s.h = h
        s.n1, s.n2, s.n3 = nn.LayerNorm(d, elementwise_affine=False), nn.LayerNorm(d), nn.LayerNorm(d, elementwise_affine=False)
        s.qkv = nn.Linear(d, 3 * d); s.o = nn.Linear(d, d)
        s.qn, s.kn = nn.RMSNorm(d), nn.RMSNorm(d)
        s.cq = nn.Linear(d, d); s.ckv = nn.Linear(d, 2 * d); s.co = nn.Linear(d, d)
        s.f1 = nn.Linear(d, ffn); s.f2 = nn.Linear(ffn, d)
        s.mod = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
    def forward(s, x, e, kcache, vcache, ctx):
        B, L, D = x.shape; H = s.h
        m = (s.mod + e).chunk(6, 1)
        y = s.n1(x) * (1 + m[1]) + m[0]
        q, k, v = s.qkv(y).chunk(3, -1)
        q, k = s.qn(q), s.kn(k)
        k = torch.cat([kcache, k], 1); v = torch.cat([vcache, v], 1)
        a = F.scaled_dot_product_attention(q.view(B, L, H, -1).transpose(1, 2), k.view(B, -1, H, D // H).transpose(1, 2), v.view(B, -1, H, D // H).transpose(1, 2))
        x = x + s.o(a.transpose(1, 2).reshape(B, L, D)) * m[2]
        cq = s.cq(s.n3(x)); ck, cv = s.ckv(ctx).chunk(2, -1)
        a = F.scaled_dot_product_attention(cq.view(B, L, H, -1).transpose(1, 2), ck.view(B, -1, H, D // H).transpose(1, 2), cv.view(B, -1, H, D // H).transpose(1, 2))
        x = x + s.co(a.transpose(1, 2).reshape(B, L, D))
        y = s.n2(x) * (1 + m[4]) + m[3]
        return x + s.f2(F.gelu(s.f1(y), approximate="tanh")) * m[5]

def run(tok_per_frame, chunk_frames=3, window_frames=21, layers=30, d=1536, iters=10):
    blocks = nn.ModuleList([Block(d) for _ in range(layers)]).to(dev, dt)
    L = tok_per_frame * chunk_frames; C = tok_per_frame * (window_frames - chunk_frames)
    x = torch.randn(1, L, d, device=dev, dtype=dt); e = torch.randn(1, 6, d, device=dev, dtype=dt)
    kc = [torch.randn(1, C, d, device=dev, dtype=dt) for _ in range(layers)]; vc = [torch.randn_like(k) for k in kc]
    ctx = torch.randn(1, 512 + 32, d, device=dev, dtype=dt)
    def step(x):
        for b, k, v in zip(blocks, kc, vc): x = b(x, e, k, v, ctx)
        return x
    with torch.no_grad():
        for _ in range(3): step(x)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph(); s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2): out = step(x)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g): out = step(x)
        res = {}
        for name, fn in (("eager", lambda: step(x)), ("graph", g.replay)):
            ts = []
            for _ in range(iters):
                a, b = torch.cuda.Event(True), torch.cuda.Event(True); a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
            res[name] = sorted(ts)[len(ts) // 2]
    params = sum(p.numel() for p in blocks.parameters())
    flops = 2 * params * L + layers * 4 * L * (L + C) * d
    del blocks, kc, vc; torch.cuda.empty_cache()
    return params, flops, res

if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name())
    a = torch.randn(8192, 8192, device=dev, dtype=dt); b = torch.randn_like(a)
    for _ in range(3): a @ b
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20): a @ b
    torch.cuda.synchronize(); mm = 20 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
    print(f"matmul bf16 {mm:.0f} TFLOP/s")
    for label, tpf in (("512x512", 1024), ("832x480", 1560)):
        for cf, wf in ((3, 21), (1, 12)):
            p, fl, r = run(tpf, cf, wf)
            video_frames = cf * 4
            for steps in (4, 2, 1):
                per_chunk = (steps + 1) * r["graph"]  # +1: cache-refresh pass at t=0
                print(f"{label} chunk={cf}lat window={wf}lat params={p/1e9:.2f}B step_ms eager={r['eager']:.1f} graph={r['graph']:.1f} "
                      f"TFLOP/s={fl/r['graph']/1e9:.0f} steps={steps}: {video_frames/per_chunk*1000:.0f} fps (DiT only), chunk latency {per_chunk:.0f} ms")
