"""What bigmodel.patch replaces in each Hugging Face family of tests/test_patch_families.py (tiny configs), and the
logits / loss-gradient relative errors against the unpatched model, per backend:

    TRITON_INTERPRET=1 python tests/show_patch_families.py reference torch triton
"""
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import bigmodel
from test_patch_families import FAMILIES, build, loss_and_grads, rel, VOCAB

backends = sys.argv[1:] or ["reference", "torch"]
for name in FAMILIES:
    original = build(name)
    ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    logits0, grads0 = loss_and_grads(original, ids)
    for backend in backends:
        patched = bigmodel.patch(copy.deepcopy(original), backend=backend)
        logits1, grads1 = loss_and_grads(patched, ids)
        worst = max(rel(grads1[n], grads0[n]) for n in grads0)
        print(f"{name:8s} {backend:9s} replaced {patched.bigmodel_patched}  skipped {patched.bigmodel_skipped or '{}'}  "
              f"logits rel {rel(logits1, logits0):.1e}  worst grad rel {worst:.1e}")
