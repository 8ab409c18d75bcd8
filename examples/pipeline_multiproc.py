"""A pipeline over processes, as with torchrun + torch.distributed.pipelining.

    python -m pipec.run --nproc-per-node 2 examples/pipeline_multiproc.py [--schedule 1F1B]

Every rank builds the same model, traces it with pipeline(), keeps the stages the schedule
places on it and trains them; activations and gradients move between the processes over
TCP (CPU) or NCCL (``--cuda``: one GPU per rank). The last stage's rank prints the losses.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import pipec  # noqa: E402
import pipec.distributed as dist  # noqa: E402
from pipec import nn  # noqa: E402
from pipec.pipelining import get_schedule_class, pipeline  # noqa: E402
from model_registry import MultiMLP  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--schedule", default="1F1B")
ap.add_argument("--cuda", action="store_true")
ap.add_argument("--steps", type=int, default=20)
args = ap.parse_args()

local = int(os.environ.get("LOCAL_RANK", "0"))
device = f"cuda:{local}" if args.cuda else "cpu"
if args.cuda:
    pipec.cuda.set_device(local)
dist.init_process_group("nccl" if args.cuda else "tcp")
rank, world = dist.get_rank(), dist.get_world_size()

cls = get_schedule_class(args.schedule)
per_rank = 1 if args.schedule.lower() in ("gpipe", "1f1b") else 2
n_stages, n_mb = world * per_rank, 8
pipec.manual_seed(0)                                   # the same model and data on every rank
model = MultiMLP(256, n_layers=n_stages)
x = pipec.randn(64, 256)
y = pipec.relu(x) * 0.5                               # a target the MLP can learn
pipe = pipeline(model, (x[:64 // n_mb],), split_spec=model.split_spec)
v = args.schedule.lower() in ("zbvzerobubble", "dualpipev")
mine = [rank, 2 * world - 1 - rank] if v else list(range(rank, n_stages, world))
stages = [pipe.build_stage(s, device) for s in mine]
schedule = cls(stages[0] if per_rank == 1 else stages, n_mb, loss_fn=nn.MSELoss())
params = [p for s in mine for p in pipe.get_stage_module(s).parameters()]
opt = pipec.optim.AdamW(params, lr=1e-3)

for step in range(args.steps):
    opt.zero_grad()
    losses = []
    kwargs = {"target": y.to(device), "losses": losses} if (n_stages - 1) in mine else {}
    schedule.step(*((x.to(device),) if 0 in mine else ()), **kwargs)
    opt.step()
    if losses and (step % 5 == 0 or step == args.steps - 1):
        print(f"step {step}: loss {sum(l.item() for l in losses) / len(losses):.4f}", flush=True)
dist.destroy_process_group()
