"""Multi-task learning: one backbone, several heads, one bundle.

    mt = hs.MultiTaskModel("efficientnet_lite0", tasks={"category": "classification", "group": "classification"},
                           loss_weights={"group": 0.5}).fit("items.csv")     # path,category,group
    mt.predict(["a.png"]) -> {"category": [...], "group": [...]};  mt.evaluate("test.csv") -> {task: metrics}

The data is one table with the input column (`path` for images, `text` for texts) and one label column per
task. The backbone stays frozen and its features come from the feature cache; a shared trainable layer (the
trunk) feeds one linear head per task, so the tasks shape a common representation, and each head has its own
loss (cross-entropy, or MSE on standardised values for regression) and metric. The total loss is the weighted
sum of the task losses.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._runtime import adamw, keeps_callers_rng, seed_everything
from ..backbones import BackboneSpec, backbone_files, create_backbone, rebuild_backbone, resolve_backbone
from ..bundle import write_bundle
from ..checkpoint import Checkpointer, open_checkpointer
from ..data.labeled import LabeledData, stratified_split
from ..errors import DataError, HeadstartError
from ..heads import Standardize
from ..inference import embed
from ..loop import LoopSettings, Resumable, run_loop
from ..metrics import task_metrics
from ..modalities import MODALITIES
from ..progress import say

TASK_KINDS = ("classification", "regression")


class MultiTaskHeads(nn.Module):
    """Standardised features -> shared trunk -> one linear output per task."""

    def __init__(self, in_dim: int, hidden: int, outputs: dict[str, int], dropout: float = 0.1) -> None:
        super().__init__()
        self.trunk = nn.Sequential(Standardize(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(),
                                   nn.Dropout(dropout))
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in outputs.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.trunk(x)
        return {name: head(shared) for name, head in self.heads.items()}


class _MultiTaskObjective(nn.Module):
    """The loop's objective: the weighted sum of the task losses on a batch of features."""

    def __init__(self, heads: MultiTaskHeads, loss) -> None:
        super().__init__()
        self.heads, self.loss = heads, loss

    def forward(self, x: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(self.heads(x), y)


class MultiTaskModel:
    """Several tasks on one backbone: `fit(table)`, `predict`, `evaluate`, `save`; `hs.load` reads it back."""

    def __init__(self, backbone: str | None = None, tasks: dict[str, str] | None = None, *, modality: str = "image",
                 loss_weights: dict[str, float] | None = None, input_col: str | None = None, hidden: int = 256,
                 epochs: int = 60, lr: float = 1e-3, batch_size: int = 64, val_fraction: float = 0.2,
                 image_size: int | None = None, pretrained: bool = True, seed: int = 0, verbose: bool = True,
                 out_dir: str | None = None) -> None:
        self.backbone = backbone
        self.tasks = tasks
        self.modality = modality
        self.loss_weights = loss_weights
        self.input_col = input_col
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.image_size = image_size
        self.pretrained = pretrained
        self.seed = seed
        self.verbose = verbose
        self.out_dir = out_dir  # a checkpoint is written under out_dir/checkpoint/ after every epoch

    # --- data -------------------------------------------------------------------------------------------
    def _check(self) -> dict[str, str]:
        if self.modality not in MODALITIES:
            raise HeadstartError(f"unknown modality '{self.modality}': choose one of {', '.join(MODALITIES)}")
        if not self.tasks:
            raise HeadstartError("give tasks={label column: 'classification' or 'regression', ...}")
        bad = {t: k for t, k in self.tasks.items() if k not in TASK_KINDS}
        if bad:
            name = next(iter(bad))
            raise HeadstartError(f"task '{name}': kind '{bad[name]}' is not one of {', '.join(TASK_KINDS)}")
        unknown = sorted(set(self.loss_weights or {}) - set(self.tasks))
        if unknown:
            raise HeadstartError(f"loss weight for '{unknown[0]}', which is not a task ({', '.join(self.tasks)})")
        return dict(self.tasks)

    def _load(self, data) -> dict[str, LabeledData]:
        """One LabeledData per task, read from the same table (each column checked as a single-task fit would)."""
        modality, key = MODALITIES[self.modality], "text" if self.modality == "text" else "path"
        parts = {name: modality.load(data, kind, False, {key: self.input_col or key, "label": name})
                 for name, kind in self._check().items()}
        first = next(iter(parts.values()))
        for name, part in parts.items():
            if part.items != first.items:
                raise DataError(f"{data}: rows of column '{name}' do not line up with the others; give every row "
                                "a label in every task column")
        return parts

    def _targets(self, name: str, part: LabeledData, classes: list[str] | None = None) -> torch.Tensor:
        if self.tasks[name] == "regression":
            mean, std = self.target_scaling_[name]
            return torch.as_tensor((part.targets - mean) / std, dtype=torch.float32)
        if classes is not None and part.classes != classes:  # evaluation data: re-index by class name
            unknown = sorted(set(part.classes) - set(classes))
            if unknown:
                raise DataError(f"{part.source}: label '{unknown[0]}' in column '{name}' was not seen in training")
            return torch.as_tensor(np.array([classes.index(c) for c in part.classes])[part.targets])
        return torch.as_tensor(part.targets, dtype=torch.long)

    def _features(self, items: list) -> tuple[np.ndarray, np.ndarray]:
        return embed(self.backbone_, items, batch_size=32, verbose=self.verbose)

    # --- fit --------------------------------------------------------------------------------------------
    @keeps_callers_rng  # seeds the global generators; the caller's own random draws must not notice
    def fit(self, data, resume: str | None = None) -> MultiTaskModel:
        """Train the trunk and every head together on the table `data`; hold out a validation split.
        `resume`: the `out_dir` of an interrupted fit; training continues from its last finished epoch (same table
        and options) to the weights an uninterrupted fit ends with."""
        gen = seed_everything(self.seed)
        parts = self._load(data)
        checkpointer = self._checkpointer(resume, parts)
        spec = resolve_backbone(self.backbone or ("minilm_l6" if self.modality == "text" else "efficientnet_lite0"),
                                self.modality)
        self.backbone_ = create_backbone(spec, pretrained=self.pretrained,
                                         image_size=self.image_size if self.modality == "image" else None).eval()
        self.classes_ = {n: list(p.classes) for n, p in parts.items() if self.tasks[n] == "classification"}
        stratify_on = next((n for n in self.tasks if self.tasks[n] == "classification"), next(iter(self.tasks)))
        tr, va = stratified_split(parts[stratify_on], self.val_fraction, self.seed)
        self.target_scaling_ = {n: (float(p.targets[tr].mean()), float(p.targets[tr].std() or 1.0))
                                for n, p in parts.items() if self.tasks[n] == "regression"}
        feats, ok = self._features(parts[stratify_on].items)
        x = torch.as_tensor(feats)
        y = {n: self._targets(n, p) for n, p in parts.items()}
        tr = [i for i in tr if ok[i]]
        va = [i for i in va if ok[i]]
        outputs = {n: len(self.classes_[n]) if n in self.classes_ else 1 for n in self.tasks}
        self.heads_ = MultiTaskHeads(x.shape[1], self.hidden, outputs)
        self.heads_.trunk[0].set_statistics(x[tr])
        self._train(x, y, torch.as_tensor(tr), gen, checkpointer)
        if checkpointer is not None:
            checkpointer.remove()  # the weights are all in the model now
        self.metrics_ = {"validation": self._score(feats[va], {n: t[va] for n, t in y.items()})}
        say(self.verbose, "validation: " + ", ".join(f"{n} {self._headline(m)}"
                                                     for n, m in self.metrics_["validation"].items()))
        return self

    def _loss(self, out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = self.loss_weights or {}
        total = torch.zeros(())
        for name, kind in self.tasks.items():
            task_loss = (F.cross_entropy(out[name], y[name]) if kind == "classification"
                         else F.mse_loss(out[name].squeeze(-1), y[name]))
            total = total + weights.get(name, 1.0) * task_loss
        return total

    def _checkpointer(self, resume: str | None, parts: dict[str, LabeledData]) -> Checkpointer | None:
        """Tied to the options and to every task column's content: a resume on other data is refused."""
        folder = resume or self.out_dir
        if folder is None:
            return None
        options = {k: v for k, v in vars(self).items() if not k.endswith("_") and k not in ("verbose", "out_dir")}
        checkpointer = open_checkpointer(folder, {"estimator": type(self).__name__, "params": options},
                                         resume is not None, "`MultiTaskModel(out_dir=...).fit`")
        checkpointer.bind_parts(MODALITIES[self.modality], {f"'{n}' column": p for n, p in parts.items()})
        return checkpointer

    def _train(self, x: torch.Tensor, y: dict[str, torch.Tensor], rows: torch.Tensor, gen: torch.Generator,
               checkpointer: Checkpointer | None = None) -> None:
        steps_per_epoch = -(-len(rows) // self.batch_size)

        def batches(_epoch: int):
            for idx in rows[torch.randperm(len(rows), generator=gen)].split(self.batch_size):
                yield x[idx], {n: t[idx] for n, t in y.items()}

        run_loop(_MultiTaskObjective(self.heads_, self._loss), [{"params": list(self.heads_.parameters())}], batches,
                 LoopSettings("multi-task heads", self.epochs, verbose=self.verbose),
                 optimizer=lambda groups: adamw(groups, lr=self.lr, weight_decay=1e-4),
                 scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(
                     opt, max_lr=self.lr, total_steps=max(self.epochs * steps_per_epoch, 1)),
                 steps_per_epoch=steps_per_epoch,
                 resumable=None if checkpointer is None else Resumable(checkpointer, gen))
        self.heads_.cpu().eval()

    # --- predict and score ------------------------------------------------------------------------------
    @torch.no_grad()
    def _outputs(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        out = self.heads_.eval()(torch.as_tensor(feats, dtype=torch.float32))
        result = {}
        for name, kind in self.tasks.items():
            if kind == "classification":
                result[name] = out[name].softmax(-1).numpy()
            else:
                mean, std = self.target_scaling_[name]
                result[name] = out[name].squeeze(-1).numpy() * std + mean
        return result

    def _score(self, feats: np.ndarray, y: dict[str, torch.Tensor]) -> dict[str, dict]:
        outputs = self._outputs(feats)
        scores = {}
        for name, kind in self.tasks.items():
            if kind == "classification":
                scores[name] = task_metrics(kind, y[name].numpy(), outputs[name], self.classes_[name])
            else:
                mean, std = self.target_scaling_[name]
                scores[name] = task_metrics(kind, y[name].numpy() * std + mean, outputs[name], [])
        return scores

    @staticmethod
    def _headline(m: dict) -> str:
        return f"accuracy {m['accuracy']:.3f}" if "accuracy" in m else f"MAE {m['mae']:.3f}"

    def predict_proba(self, inputs) -> dict[str, np.ndarray]:
        """Per task: class probabilities (classification) or values (regression), one row per input."""
        self._check_fitted()
        items = MODALITIES[self.modality].list_inputs([inputs] if isinstance(inputs, str) else list(inputs))
        feats, ok = self._features(items)
        out = self._outputs(feats)
        for v in out.values():
            v[~ok] = np.nan
        return out

    def predict(self, inputs) -> dict[str, list]:
        """Per task: labels or values, one per input (None where an input could not be read)."""
        out = self.predict_proba(inputs)
        result = {}
        for name, values in out.items():
            if name in self.classes_:
                result[name] = [None if np.isnan(r).any() else self.classes_[name][int(r.argmax())] for r in values]
            else:
                result[name] = [None if np.isnan(v) else float(v) for v in values]
        return result

    def evaluate(self, data) -> dict[str, dict]:
        """Each task's metrics on a labeled table given like `fit`'s."""
        self._check_fitted()
        parts = self._load(data)
        first = next(iter(parts.values()))
        feats, ok = self._features(first.items)
        y = {n: self._targets(n, p, self.classes_.get(n))[ok] for n, p in parts.items()}
        return self._score(feats[ok], y)

    def _check_fitted(self) -> None:
        if not hasattr(self, "heads_"):
            raise HeadstartError("this MultiTaskModel is not fitted yet: call fit() or hs.load() first")

    # --- persistence ------------------------------------------------------------------------------------
    def save(self, path: str) -> str:
        """One bundle: backbone and every head in the safetensors, tasks and labels in the JSON."""
        self._check_fitted()
        config = {"modality": self.modality, "task": "multitask", "estimator": type(self).__name__,
                  "backbone": self.backbone_.spec.to_dict(), "backbone_trained": False,
                  "head": {"kind": "multitask", "hidden": self.hidden, "tasks": self.tasks,
                           "loss_weights": self.loss_weights, "labels": self.classes_,
                           "target_scaling": self.target_scaling_},
                  "labels": [], "metrics": self.metrics_}
        state = {**{f"backbone.{k}": v for k, v in self.backbone_.state_dict().items()},
                 **{f"heads.{k}": v for k, v in self.heads_.state_dict().items()}}
        return write_bundle(path, config, state, backbone_files(self.backbone_))

    @classmethod
    def _from_bundle(cls, config: dict, state: dict[str, torch.Tensor], files: dict[str, bytes] | None = None
                     ) -> MultiTaskModel:
        head = config["head"]
        model = cls(tasks=dict(head["tasks"]), modality=config["modality"], loss_weights=head.get("loss_weights"),
                    hidden=head["hidden"], verbose=False)
        weights = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
        model.backbone_ = rebuild_backbone(BackboneSpec.from_dict(config["backbone"]), files or {}, weights).eval()
        model.backbone_.load_state_dict(weights)
        model.classes_ = {n: list(c) for n, c in head["labels"].items()}
        model.target_scaling_ = {n: tuple(v) for n, v in head["target_scaling"].items()}
        outputs = {n: len(model.classes_[n]) if n in model.classes_ else 1 for n in model.tasks}
        model.heads_ = MultiTaskHeads(model.backbone_.feature_dim, model.hidden, outputs)
        model.heads_.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("heads.")})
        model.metrics_ = config.get("metrics", {})
        return model
