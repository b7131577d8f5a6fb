"""Pooling and convolution edge cases from PyTorch itself, for tests/layer_edge_cases.rs.

    /work/pyref/bin/python scripts/make_pool_fixtures.py   # venv: scripts/requirements-fixtures.txt

Max pooling on inputs with EXACT ties (small integers), so the tie rule (PyTorch's CPU kernel:
the first maximum in row-major window order takes the gradient) is what is compared; average
pooling with ceil_mode and count_include_pad; strided, padded, dilated and grouped convolutions
on odd sizes. Each case stores its input, an upstream gradient, PyTorch's output and input-gradient.
"""
import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(0)
tensors, cases = {}, []


def record(name, spec, x, fn):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    g = torch.randn_like(y)
    y.backward(g)
    tensors[f"{name}.input"] = x.detach().contiguous()
    tensors[f"{name}.upstream"] = g.contiguous()
    tensors[f"{name}.output"] = y.detach().contiguous()
    tensors[f"{name}.input_grad"] = x.grad.contiguous()
    cases.append({"name": name, **spec})


ties = torch.randint(0, 3, (2, 3, 9, 11)).float()
for k, s, p, d, ceil in [(3, 2, 1, 1, False), (2, 2, 0, 1, False), (3, 2, 0, 1, True), (3, 1, 1, 1, False), (2, 1, 0, 2, False), (3, 3, 1, 1, True)]:
    name = f"max_pool_k{k}_s{s}_p{p}_d{d}_{'ceil' if ceil else 'floor'}"
    spec = {"op": "MaxPool2d", "kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil}
    record(name, spec, ties, lambda x: F.max_pool2d(x, k, s, p, d, ceil_mode=ceil))

smooth = torch.randn(2, 3, 9, 11)
for k, s, p, ceil, incl in [(3, 2, 1, True, True), (3, 2, 1, True, False), (2, 2, 0, True, True), (3, 1, 1, False, False)]:
    name = f"avg_pool_k{k}_s{s}_p{p}_{'ceil' if ceil else 'floor'}_{'incl' if incl else 'excl'}"
    spec = {"op": "AvgPool2d", "kernel_size": k, "stride": s, "padding": p, "ceil_mode": ceil, "count_include_pad": incl}
    record(name, spec, smooth, lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=incl))

for out in [(1, 1), (4, 5), (3, 3)]:
    record(f"adaptive_avg_pool_{out[0]}x{out[1]}", {"op": "AdaptiveAvgPool2d", "output_size": list(out)}, smooth,
           lambda x: F.adaptive_avg_pool2d(x, out))

for c_in, c_out, k, s, p, d, g in [(3, 4, 3, 2, 1, 1, 1), (3, 6, 3, 2, 2, 2, 3), (4, 4, 3, 1, 1, 1, 4), (3, 4, (3, 1), 2, (1, 0), 1, 1), (3, 2, 5, 3, 0, 1, 1)]:
    w = torch.randn(c_out, c_in // g, *((k, k) if isinstance(k, int) else k))
    b = torch.randn(c_out)
    name = f"conv_{c_in}x{c_out}_k{k}_s{s}_p{p}_d{d}_g{g}".replace(" ", "").replace("(", "").replace(")", "").replace(",", "-")
    tensors[f"{name}.weight"] = w.contiguous()
    tensors[f"{name}.bias"] = b
    spec = {"op": "Conv2d", "kernel_size": list(w.shape[2:]), "stride": s, "padding": [p, p] if isinstance(p, int) else list(p),
            "dilation": d, "groups": g}
    record(name, spec, torch.randn(2, c_in, 9, 11), lambda x: F.conv2d(x, w, b, s, p, d, g))

# Adaptive max pooling on the tied input: uneven overlapping bins (4x5), even rows with uneven columns (3x3),
# and the global maximum (1x1); PyTorch's tie rule is the same first maximum in row-major order.
for out in [(4, 5), (3, 3), (1, 1)]:
    record(f"adaptive_max_pool_{out[0]}x{out[1]}", {"op": "AdaptiveMaxPool2d", "output_size": list(out)}, ties,
           lambda x: F.adaptive_max_pool2d(x, out))

save_file(tensors, "tests/fixtures/layer_edge_cases.safetensors", metadata={"cases": json.dumps(cases), "torch": torch.__version__})
print(len(cases), "cases")
