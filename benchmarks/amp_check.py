"""Does the Performer stay finite under fp16 / bf16 autocast on this device, where the reference's does not?

T2T-ViT-14's architecture, with its first T2T layer's q/k/v projection scaled up as trained layers can have it
(large queries and keys overflow exp() in half precision, and the reference's 1e-8 underflows to 0 in fp16), runs
forward and backward under autocast, for this package and the reference's math. Prints a table and writes JSON:
finite or not, and the largest deviation from fp32 logits.

    python benchmarks/amp_check.py --device cuda
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import timm_t2t  # noqa: E402,F401  registers the models, installed or not
from timm_t2t._text import HelpFormatter  # noqa: E402
from benchmarks.reference_t2t import ReferenceT2TViT, reference_config  # noqa: E402


def _scaled_copy(scale: float) -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state_dict = ReferenceT2TViT(**reference_config('t2t_vit_14')).state_dict()
    state_dict['tokens_to_token.attention1.kqv.weight'] = state_dict['tokens_to_token.attention1.kqv.weight'] * scale
    return state_dict


def check(device: torch.device, scale: float, batch_size: int) -> List[dict]:
    weights = _scaled_copy(scale)
    models = {'this package': timm.create_model('t2t_vit_14'), 'reference': ReferenceT2TViT(**reference_config('t2t_vit_14'))}
    torch.manual_seed(1)
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    rows = []
    for name, model in models.items():
        model.load_state_dict(weights)
        model = model.to(device)
        with torch.no_grad():
            exact = model.eval()(x).float()
        for dtype in (torch.float16, torch.bfloat16):
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                logits = model(x).float()
            model.train()
            model.zero_grad()
            with torch.autocast(device.type, dtype=dtype):
                loss = model(x).float().logsumexp(dim=-1).mean()
            loss.backward()
            grads_finite = all(p.grad.isfinite().all().item() for p in model.parameters() if p.grad is not None)
            finite = logits.isfinite().all().item()
            rows.append(dict(
                implementation=name, dtype=str(dtype).replace('torch.', ''), logits_finite=finite,
                loss_finite=loss.isfinite().item(), grads_finite=grads_finite,
                max_logit_error=(logits - exact).abs().max().item() if finite else None,
                logit_scale=exact.abs().max().item()))
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--scale', type=float, default=10., help='factor on the first T2T layer\'s q/k/v weights')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
    rows = check(device, args.scale, args.batch_size)
    print(f'{"implementation":14} {"dtype":9} {"logits":>7} {"loss":>6} {"grads":>6} {"max |logit - fp32|":>19}')
    for r in rows:
        error = f'{r["max_logit_error"]:.3g}' if r['max_logit_error'] is not None else '-'
        print(f'{r["implementation"]:14} {r["dtype"]:9} {str(r["logits_finite"]):>7} {str(r["loss_finite"]):>6} '
              f'{str(r["grads_finite"]):>6} {error:>19}')
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f'amp_check_{device.type}.json'
    path.write_text(json.dumps(dict(device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
                                    torch=torch.__version__, timm=timm.__version__, scale=args.scale, rows=rows),
                               indent=2))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
