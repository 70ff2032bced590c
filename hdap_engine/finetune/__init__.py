"""Fine-tuning: knowledge distillation from the unpruned model, one process or torchrun.

The recipe is `hdap_engine.options.FinetuneOptions` (a frozen dataclass; `DISTILL`
for fine-tuning, `SCRATCH` for training from scratch).

- `trainer`: the loop (`fit`), the loss (`distillation_loss`), the augmentation.
- `checkpoint`: per-epoch checkpoints that make `--resume` exact.
- `distributed`: torchrun's process group (Gloo on CPU, NCCL on CUDA) and the few
  collectives the loop needs.
- `run`: `train_model` (the demo weights) and `finetune_bundle` (a bundle in, a
  fine-tuned bundle out).
- `detection`: detectors (`fit_detector`): their own loss plus distillation on the
  heads' outputs, the same checkpoints and torchrun.
- `commands`: `hdap train`, `hdap finetune`, ``python -m hdap_engine.finetune``.
"""
