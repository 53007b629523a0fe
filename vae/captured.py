"""A training step recorded once as a CUDA graph and replayed: `vae train --cuda-graph`.

The seed's model is small: at batch 128 a step is microseconds of arithmetic spread over ~100 kernel launches,
so on a GPU the host's launching, not the GPU, sets the pace. A CUDA graph launches the whole step (forward,
loss, backward, gradient clipping, Adam) as one unit. What a graph needs, and how it is met here:

- Static memory: each full batch is copied into the same input buffers; the step's outputs (the summed loss,
  reconstruction and KL) land in the same output buffer, read before the next replay.
- Nothing decided on the host inside the step: Adam runs with capturable=True and a tensor learning rate
  (set per epoch with fill_, outside the graph); the randomness (eps, noise, binarization) is drawn outside
  the graph from the epoch's generator, in the same order as without a graph, so the numbers are the same.
- Warm-up before recording (cuBLAS handles, Adam's state) changes the weights and Adam's moments, so they are
  saved before and restored after: the run trains from where it was, as without a graph.
- A batch of another size (the epoch's last) runs eagerly with the same model and optimizer.

With capture=False the same buffers and warm-up run without recording: how the CPU tests check this code's
bookkeeping against the plain step (a graph itself needs CUDA).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

# body(x, inp, eps, set_to_none) -> (3,) tensor: one step on a batch. set_to_none=False zeroes .grad in place
# (a no-op where it is None), as the tensors the graph's backward writes into must stay
StepBody = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, bool], torch.Tensor]
WARMUP_STEPS = 3  # what PyTorch's CUDA-graph guide uses before capturing a whole training step


class CapturedStep:
    def __init__(self, body: StepBody, model: torch.nn.Module, opt: torch.optim.Optimizer, capture: bool) -> None:
        self.body, self.model, self.opt, self.capture = body, model, opt, capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self.out: torch.Tensor | None = None
        opt._warned_capturable_if_run_uncaptured = True  # warm-up and odd-sized batches step uncaptured, by design

    def __call__(self, x: torch.Tensor, inp: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        """The step's (loss sum, recon sum, kl sum): a view of a buffer the next call overwrites."""
        if self.static is None:
            self._record(x, inp, eps)
        sx, sinp, seps = self.static
        if x.shape != sx.shape or (eps is not None and eps.shape != seps.shape):
            return self.body(x, inp, eps, False)
        sx.copy_(x)
        sinp.copy_(inp)
        if seps is not None:
            seps.copy_(eps)
        if self.graph is not None:
            self.graph.replay()
            return self.out
        return self.body(sx, sinp, seps, False)

    def _record(self, x: torch.Tensor, inp: torch.Tensor, eps: torch.Tensor | None) -> None:
        self.static = (x.clone(), inp.clone(), eps.clone() if eps is not None else None)
        saved = _snapshot(self.model, self.opt)
        side = torch.cuda.Stream() if self.capture else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for _ in range(WARMUP_STEPS):
                self.body(*self.static, True)
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
        _restore(self.model, self.opt, saved)
        if self.capture:
            self.opt.zero_grad(set_to_none=True)  # the graph's backward allocates .grad from its own pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.body(*self.static, False)


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[list[torch.Tensor], dict[int, dict]]:
    params = [p.detach().clone() for p in model.parameters()]
    state = {
        id(p): {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
        for p in model.parameters()
        if p in opt.state
    }
    return params, state


@torch.no_grad()
def _restore(model: torch.nn.Module, opt: torch.optim.Optimizer, saved: tuple[list[torch.Tensor], dict]) -> None:
    """In place, so that the addresses the graph will record stay those of the model's and Adam's tensors. A
    moment Adam created during warm-up goes back to zero (and its step count to 0): a fresh Adam's state."""
    params, state = saved
    for p, old in zip(model.parameters(), params, strict=True):
        p.copy_(old)
        before = state.get(id(p), {})
        for k, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v):
                v.copy_(before[k]) if k in before else v.zero_()
