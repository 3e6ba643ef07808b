"""Training: mAP (``evaluate``), matched seeds (``seeding``), the batched linear trainer (``linear``),
its one-config reference loop (``reference``) and the batched Adam (``optim``)."""
