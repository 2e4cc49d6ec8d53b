"""Times one BigGAN-PyTorch GAN iteration on the CPU, for comparison with `variant=no_e_gan`.

  python benchmarks/biggan_pytorch_step.py --biggan_pytorch=PATH/TO/BigGAN-PyTorch \
      --resolution=32 --ch=32 --batch_size=16 --d_steps=1 [--steps=10] [--threads=2]

Needs `torch` and a checkout of github.com/ajbrock/BigGAN-PyTorch (neither is a dependency of
this package). The iteration is what BigGAN-PyTorch's `train_fns.GAN_training_function` does:
`d_steps` D updates on the hinge loss (G's forward without gradients, real and generated images
in one D call), then one G update, then the EMA of G. Models are BigGAN-PyTorch's `Generator` and
`Discriminator` (spectral norm, orthogonal init, hierarchical z with a shared embedding of a
single class, attention at 16 px, Adam). The matching command on this side is

  python -m bigbigan_jax.benchmark --config=configs/mnist.py:variant=no_e_gan \
      --config.model.image_channels=3 --config.model.generator.ch=32 \
      --config.model.discriminator.ch=32 --config.batch_size=16 --config.optim.d_steps=1

Prints one JSON object; `iter_s` is the median over `--steps` iterations after 2 warm-up ones.
"""

import argparse
import json
import statistics
import sys
import time


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--biggan_pytorch", required=True, help="a BigGAN-PyTorch checkout")
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--ch", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--d_steps", type=int, default=1)
  parser.add_argument("--z_dim", type=int, default=120)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, args.biggan_pytorch)
  import BigGAN  # pylint: disable=g-import-not-at-top,import-error

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  common = dict(resolution=args.resolution, n_classes=1, G_attn="16", D_attn="16")
  G = BigGAN.Generator(G_ch=args.ch, dim_z=args.z_dim, shared_dim=32, hier=True,
                       G_lr=2e-4, G_B1=0.5, **common)
  D = BigGAN.Discriminator(D_ch=args.ch, D_lr=2e-4, D_B1=0.5, **common)
  G_ema = BigGAN.Generator(G_ch=args.ch, dim_z=args.z_dim, shared_dim=32, hier=True,
                           skip_init=True, no_optim=True, **common)
  G_ema.load_state_dict(G.state_dict())
  G.train()
  D.train()
  batch, res = args.batch_size, args.resolution
  x = torch.zeros(args.d_steps, batch, 3, res, res)
  y = torch.zeros(batch, dtype=torch.long)

  def toggle(net, on):
    for p in net.parameters():
      p.requires_grad = on

  def iteration():
    toggle(D, True)
    toggle(G, False)
    for i in range(args.d_steps):
      D.optim.zero_grad()
      with torch.no_grad():
        g_z = G(torch.randn(batch, G.dim_z), G.shared(y))
      scores = D(torch.cat([g_z, x[i]]), torch.cat([y, y]))
      fake, real = scores[:batch], scores[batch:]
      loss = torch.mean(torch.relu(1. - real)) + torch.mean(torch.relu(1. + fake))
      loss.backward()
      D.optim.step()
    toggle(D, False)
    toggle(G, True)
    G.optim.zero_grad()
    loss = -torch.mean(D(G(torch.randn(batch, G.dim_z), G.shared(y)), y))
    loss.backward()
    G.optim.step()
    with torch.no_grad():  # what BigGAN-PyTorch's utils.ema does
      ema = dict(G_ema.state_dict())
      for name, value in G.state_dict().items():
        ema[name].copy_(ema[name] * 0.999 + value * 0.001)

  for _ in range(2):
    iteration()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    iteration()
    times.append(time.perf_counter() - start)
  print(json.dumps({"framework": "BigGAN-PyTorch", "torch": torch.__version__,
                    "mkldnn": torch.backends.mkldnn.is_available(), "threads": args.threads,
                    "resolution": res, "ch": args.ch, "batch_size": batch,
                    "d_steps": args.d_steps, "iter_s": statistics.median(times),
                    "iter_s_min": min(times)}))


if __name__ == "__main__":
  main()
