"""Training of the miniature PixArt-delta shipped as the built-in `tiny` model (issue #5).

Stages, each a resumable entry point that runs unchanged data-parallel under `torchrun --nproc_per_node N`
(CPU: gloo) or `accelerate launch --multi_gpu --num_processes N` (GPUs); accelerate's `Accelerator` reads
the launcher's environment. (`accelerate launch --cpu` starts one process only: use torchrun on CPU.)

    python -m reference.train.vae     --out runs/vae                      # AutoencoderKL + scaling factor
    python -m reference.train.teacher --vae runs/vae/vae --out runs/teacher  # epsilon DiT with CFG dropout
    python -m reference.train.lcd     --teacher runs/teacher/model --out runs/lcd  # PixArt-delta Alg. 1

Data are generated, not downloaded (`data.py`), and rendered on the fly (`common.SceneStream`); the
teacher trains the tiny T5 with the DiT, LCD keeps it frozen. Each stage writes a complete
diffusers-layout model folder, loadable with `reference.load_model`. `gpu_run.py` runs teacher arms,
their selection, LCD and the quality benchmark within one budgeted GPU session.
"""
