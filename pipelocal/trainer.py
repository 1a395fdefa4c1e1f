"""The training loop of one process: epochs, learning rate, evaluation, logs. Nothing method-specific."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from pipelocal.config import JobConfig, to_dict
from pipelocal.metrics.console import Console, epoch_line
from pipelocal.metrics.jsonl import JsonlWriter
from pipelocal.metrics.memory import SavedTensorMeter, cuda_peak_bytes, static_bytes
from pipelocal.optim import build_optimizers, lr_for_step, set_lr
from pipelocal.runtime import LocalNet
from pipelocal.runtime.guidance import guide_for
from pipelocal.schedules.sequential import evaluate, train_step


class Trainer:
    """Sequential and e2e modes: ``fit()`` trains for ``train.epochs`` and returns the summary."""

    def __init__(
        self, cfg: JobConfig, net: LocalNet, train_loader, test_loader, device, run_dir: Path, console: Console
    ):
        self.cfg, self.net, self.device = cfg, net.to(device), device
        self.train_loader, self.test_loader = train_loader, test_loader
        self.optimizers = build_optimizers(net.local_modules, cfg.optim)
        self.meter = SavedTensorMeter(net.parameters()) if cfg.metrics.memory else None
        self.run_dir = run_dir
        self.log = JsonlWriter(run_dir / "metrics.jsonl")
        self.console = console
        self.saved_peak = [0] * net.num_modules
        self.step = 0
        self.guided_steps = 0

    def steps_per_epoch(self) -> int:
        n = len(self.train_loader)
        return min(n, self.cfg.train.max_steps) if self.cfg.train.max_steps else n

    def train_epoch(self, epoch: int) -> dict:
        cfg, steps = self.cfg, self.steps_per_epoch()
        self.net.train()
        self.train_loader.set_epoch(epoch)
        loss_sum, local_steps = None, 0
        guide_sum, guided = None, 0
        samples = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with self.console.progress(f"epoch {epoch + 1}/{cfg.train.epochs}", steps) as update:
            for i, batch in enumerate(self.train_loader):
                if i == steps:
                    break
                set_lr(self.optimizers, lr_for_step(cfg, epoch, i, steps))
                guide = guide_for(cfg.guidance, epoch, self.step)
                per_module = cfg.optim.step == "per_module"
                result = train_step(self.net, batch, self.optimizers, per_module, self.meter, guide)
                self.saved_peak = [max(a, b) for a, b in zip(self.saved_peak, result.saved_peak)]
                losses = torch.stack(result.losses)
                if result.guided:  # the final loss of an end-to-end step; local losses are not all computed
                    guide_sum = losses[-1] if guide_sum is None else guide_sum + losses[-1]
                    guided += 1
                else:
                    loss_sum = losses if loss_sum is None else loss_sum + losses
                    local_steps += 1
                samples += len(batch)
                self.step += 1
                if (i + 1) % cfg.metrics.log_every == 0 or i + 1 == steps:
                    rate = samples / (time.perf_counter() - start)
                    self._log_interval(epoch, i + 1, losses, rate, update, guided)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # timing must include queued kernels
        seconds = time.perf_counter() - start
        self.guided_steps += guided
        return {
            "train_seconds": seconds,
            "samples_per_s": samples / seconds,
            "train_loss": (loss_sum / local_steps).tolist() if loss_sum is not None else [],
            "guidance_steps": guided,
            "guidance_loss": (guide_sum / guided).item() if guided else None,
        }

    def _log_interval(self, epoch: int, step: int, losses: torch.Tensor, rate: float, update, guided: int) -> None:
        values = losses.tolist()  # host sync, once per log interval only
        lr = self.optimizers[0].param_groups[0]["lr"]
        self.log.write(
            {
                "kind": "interval",
                "epoch": epoch,
                "step": self.step,
                "lr": lr,
                "loss": values,
                "samples_per_s": rate,
                "guidance_steps": guided,
            }
        )
        update(step, {"loss": values[-1], "lr": lr, "samples/s": round(rate, 1)})

    def fit(self) -> dict:
        cfg = self.cfg
        best, best_epoch, history = None, None, []
        for epoch in range(cfg.train.epochs):
            stats = self.train_epoch(epoch)
            record = {"kind": "epoch", "epoch": epoch, **stats, "saved_bytes_peak": self.saved_peak}
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                ev = evaluate(self.net, self.test_loader)
                record.update(test_top1=ev["top1"], module_top1=ev["module_top1"])
                if best is None or ev["top1"] > best:
                    best, best_epoch = ev["top1"], epoch
            record["cuda_peak_bytes"] = cuda_peak_bytes(self.device)
            self.log.write(record)
            history.append(record)
            self.console.print(epoch_line(record))
        summary = self._summary(history, best, best_epoch)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.log.close()
        return summary

    def _summary(self, history: list[dict], best, best_epoch) -> dict:
        rates = sorted(h["samples_per_s"] for h in history)
        return {
            "mode": self.cfg.mode,
            "method": self.cfg.method.name,
            "num_modules": self.net.num_modules,
            "module_units": [list(m.unit_range) for m in self.net.local_modules],
            "final_top1": history[-1].get("test_top1"),
            "best_top1": best,
            "best_epoch": best_epoch,
            "samples_per_s_median": rates[len(rates) // 2],
            "train_seconds": sum(h["train_seconds"] for h in history),
            "steps": self.step,
            "guidance_steps": self.guided_steps,
            "saved_bytes_peak": self.saved_peak,
            "saved_bytes_peak_max": max(self.saved_peak),
            **static_bytes(self.net, self.optimizers),
            "cuda_peak_bytes": history[-1]["cuda_peak_bytes"],
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "config": to_dict(self.cfg),
        }
