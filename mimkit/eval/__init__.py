"""Evaluation of pretrained encoders: k-NN, linear probe, fine-tuning.

* :func:`mimkit.eval.features.extract_features` — frozen features (cls token or mean of patch tokens);
* :func:`mimkit.eval.knn.knn_accuracy` — 20-NN, cosine, votes weighted by exp(sim / 0.07);
* :func:`mimkit.eval.linear.linear_probe` / :func:`~mimkit.eval.linear.fit_linear_probe` —
  BatchNorm1d(affine=False) + Linear on cached features;
* :func:`mimkit.eval.finetune.finetune` — encoder + head with layer-wise lr decay, drop path,
  mixup/cutmix/label smoothing (Lightning);
* :mod:`mimkit.eval.data` — loading any checkpoint spec and the evaluation datasets.
"""

#: defaults of :func:`mimkit.eval.finetune.finetune` and ``mimkit finetune`` (kept here so the CLI
#: parser does not import Lightning)
FINETUNE_DEFAULTS = dict(
    epochs=10, batch_size=128, blr=1e-3, lr=None, min_lr=1e-6, layer_decay=0.75, weight_decay=0.05,
    drop_path=0.1, mixup=0.0, cutmix=0.0, label_smoothing=0.1, warmup_epochs=1.0, pool="mean", ema=0.0,
)
