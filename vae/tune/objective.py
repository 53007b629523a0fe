"""The objective of a study: suggest -> config -> fit -> return the best validation -ELBO of the trial.

Every trial trains at the study's whole budget (its epochs, early stopping included) and its value is its best
epoch's validation -ELBO, whose weights (best.pt) are what the pipeline registers: the trial that wins is the
candidate, chosen at the budget it was trained at. The pruner stops the others early (vae/tune/search.py); the
seed recipe's trial is never pruned (vae/tune/seeds.py). A trial that retries one whose worker died resumes that
trial's checkpoint instead of starting over.

Under torchrun rank 0 owns the Optuna trial; the other ranks follow through TorchDistributedTrial, which
broadcasts every suggest/report/should_prune, so a pruned trial raises TrialPruned in every rank. One process
group serves every trial of the job (fit() reuses it). Everything a trial leaves behind besides its value
(its MLflow run, user attributes, timings, its folder) is the bookkeeper's job, on rank 0.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna_integration import TorchDistributedTrial

from vae.api import record
from vae.checkpoint import FILENAME
from vae.code import code_version
from vae.config import Config
from vae.data import Dataset
from vae.distributed import DistContext, broadcast_object
from vae.errors import DivergedError
from vae.training import FitResult, fit, val_loss
from vae.tune.seeds import FIXED, ORIGIN, RECIPE
from vae.tune.space import suggest, to_config
from vae.tune.storage import AskLock, counted
from vae.tune.untracked import NullTracker

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from vae.tracking.study import StudyTracker


class TrialFailed(Exception):
    """A diverged trial: recorded as FAIL with its reason, the study goes on."""


class Surplus(Exception):
    """A trial created after the study already had n_trials (two workers asked at the same moment)."""


def pruning(trial, on_rank0=None, prunable: bool = True):
    """fit() callback: report the epoch's validation -ELBO to the pruner, and stop the trial when it says so
    (or when the value is not finite: every rank sees the same all-reduced value)."""

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        value = row["val_neg_elbo"]
        if on_rank0 is not None:
            on_rank0(epoch, row)
        if not math.isfinite(value):
            raise DivergedError(f"val -ELBO is {value} at epoch {epoch}")
        trial.report(value, epoch)
        if prunable and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: val -ELBO {value:.2f} nats")

    return on_epoch


@dataclass
class Bookkeeper:
    """Rank 0's record of each trial: the surplus check, the trial's live MLflow run (a TrainingRun under the
    study run, as `vae train` logs), user attributes, the seconds spent training and tracking (for the
    benchmark), and the trial's folder (kept only when it completes)."""

    study: optuna.Study
    tracker: StudyTracker | NullTracker
    lock: AskLock
    out: Path
    n_trials: int
    data_info: dict[str, Any]  # the data set as the trials' dataset input
    ran: int = 0
    resumed_from: int | None = None  # the dead worker's trial whose folder this trial continues

    def is_surplus(self, trial: optuna.Trial) -> bool:
        """Whether the study had its trials before this one began; also readies the trial's folder: a retry of
        a trial whose worker died takes over that trial's folder, to resume its checkpoint (`resumed_from`)."""
        self.lock.release()  # the trial exists now: other workers may count
        trials = self.study.get_trials(deepcopy=False)
        retried = next((t.system_attrs.get("retry_history") for t in trials if t.number == trial.number), None)
        surplus = not retried and len(counted([t for t in trials if t.number < trial.number])) >= self.n_trials
        folder = self.out / f"trial-{trial.number}"
        self.resumed_from = None
        if not surplus and folder.exists():  # left by a study of the same name whose storage was deleted
            shutil.rmtree(folder)
        if surplus:
            trial.set_user_attr("surplus", True)
        elif retried and (self.out / f"trial-{retried[-1]}" / FILENAME).is_file():
            os.replace(self.out / f"trial-{retried[-1]}", folder)
            self.resumed_from = retried[-1]
            trial.set_user_attr("resumed_from", retried[-1])
        return surplus

    def start(self, trial: optuna.Trial, params: dict[str, Any], cfg: Config, nproc: int) -> None:
        self.ran += 1
        self.t0, self.tracked_from = time.perf_counter(), self.tracker.seconds
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("code_version", code_version())  # a later night with other code trains it again
        trial.set_user_attr("nproc", nproc)
        trial.set_user_attr("worker", os.environ.get("VAE_TUNE_WORKER", "0"))
        folder = self.out / f"trial-{trial.number}"
        self.run = self.tracker.start_trial(trial.number, cfg, self.data_info, folder, {**params, "nproc": nproc})
        if self.run.run_id is not None:  # None: tracking is off
            trial.set_user_attr("mlflow_run_id", self.run.run_id)

    def log_epoch(self, epoch: int, row: dict[str, float]) -> None:
        self.run(epoch, row)

    def _seconds(self, trial: optuna.Trial) -> None:
        # training: fit less the MLflow calls made from its callback; tracking: every MLflow call of the trial
        tracking = self.tracker.seconds - self.tracked_from + self.run.epoch_log_seconds
        trial.set_user_attr("train_seconds", time.perf_counter() - self.t0 - tracking)

    def failed(self, trial: optuna.Trial, error: Exception) -> None:
        """Pruned, diverged, or a bug: the trial's MLflow run ends in every case, and its folder goes."""
        self._seconds(trial)
        state = "pruned" if isinstance(error, optuna.TrialPruned) else "fail"
        reason = str(error) if isinstance(error, (optuna.TrialPruned, DivergedError)) else repr(error)
        trial.set_user_attr("fail_reason" if state == "fail" else "pruned_reason", reason)
        self.tracker.end_trial(self.run, state, reason=reason)
        trial.set_user_attr("tracking_seconds", self.tracker.seconds - self.tracked_from)
        shutil.rmtree(self.out / f"trial-{trial.number}", ignore_errors=True)  # only complete trials become models

    def completed(self, trial: optuna.Trial, result: FitResult, cfg: Config) -> None:
        """The trial's best epoch is its model: best.pt (`checkpoint`), and history.json as `vae train` writes it."""
        self._seconds(trial)
        record(cfg, self.out / f"trial-{trial.number}", result)
        trial.set_user_attr("checkpoint", str(Path(result.best_checkpoint or result.checkpoint).resolve()))
        trial.set_user_attr("best_epoch", result.best_epoch)
        final = {k: v for k, v in result.metrics.items() if k.startswith(("val_", "train_"))}
        self.tracker.end_trial(self.run, "complete", metrics=final)
        trial.set_user_attr("tracking_seconds", self.tracker.seconds - self.tracked_from)


@dataclass
class Objective:
    base: Config
    space: dict[str, dict[str, Any]]
    data: Dataset
    ctx: DistContext
    out: Path
    book: Bookkeeper | None  # rank 0 only

    def __call__(self, trial: optuna.Trial | None) -> float:
        """trial is None on ranks > 0, which follow rank 0's trial."""
        book = self.book
        surplus, resumed = broadcast_object((book.is_surplus(trial), book.resumed_from) if book else None, self.ctx)
        if surplus:
            raise Surplus("the study already has its trials")
        t = TorchDistributedTrial(trial) if self.ctx.is_distributed else trial
        fixed = t.user_attrs.get(FIXED)  # a queued config the space cannot express: trained as it is
        params = {} if fixed else suggest(t, self.space)
        cfg = Config.from_dict(fixed) if fixed else to_config(self.base, params)
        if book:
            book.start(trial, params, cfg, self.ctx.world_size)
        if resumed is not None and self.ctx.is_main:
            log.info(
                "trial %d resumes the training of trial %d (its worker died) from its checkpoint", t.number, resumed
            )
        prunable = t.user_attrs.get(ORIGIN) != RECIPE  # the recipe always runs its whole budget
        try:
            result = fit(
                cfg,
                out=self.out / f"trial-{t.number}",
                resume=resumed is not None,
                data=self.data,
                callbacks=[pruning(t, book.log_epoch if book else None, prunable)],
            )
        except Exception as e:
            if book:
                book.failed(trial, e)
            if isinstance(e, DivergedError):
                raise TrialFailed(str(e)) from None
            raise
        if book:
            book.completed(trial, result, cfg)
        return min(val_loss(row) for row in result.history)  # the best epoch's: the weights in best.pt
