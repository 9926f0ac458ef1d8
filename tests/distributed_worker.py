"""What test_distributed.py runs under torchrun: CLI commands, one after another, recording every file this rank
creates, writes, renames or removes under a folder.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_worker.py WATCHED LOG COMMANDS.json

COMMANDS.json: a list of argument lists for ensemble_distill.cli.main, or ["toy-store", FOLDER] for `toy_store`.
The paths this rank wrote under WATCHED go to LOG.<rank>.json (outside WATCHED), as paths relative to it, after
each command; the exit status is the first nonzero one. With KILL_AFTER="TEXT:N" in the environment, rank 0 dies
(os._exit) once the training of a folder whose path holds TEXT has written its epoch N, and torchrun stops the
others: a kill after a checkpoint.
"""

import json
import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
VOCAB = [f"v{i}" for i in range(50)]


def toy_store(folder) -> None:
    """Three teacher stores (top-8 float16, top-8 log_uint8, 6 samples) of 19 sentences in shards of 4 (five
    shards: under two ranks the last round leaves rank 1 idle), from a teacher that depends on the tokens only."""
    import numpy as np
    import torch

    from ensemble_distill.teacher_store import fingerprint_dataset, write_store

    sentences = [np.random.default_rng(i).integers(0, 50, size=1 + i % 7) for i in range(19)]

    def teacher(batch):
        ids = torch.from_numpy(np.concatenate(batch)).double()
        return torch.softmax(3 * torch.sin(0.7 * ids[:, None] + 0.3 * torch.arange(50.0)[None]), -1).float()

    for name, sparsity in (("top8", dict(top_k=8)), ("log8", dict(top_k=8, probs_dtype="log_uint8")),
                           ("sampled6", dict(samples=6, seed=4))):
        write_store(f"{folder}/{name}", sentences, teacher, vocab=VOCAB, fingerprint=fingerprint_dataset(sentences),
                    teachers=["toy"], shard_sentences=4, batch_sentences=3, progress=False, **sparsity)


def main() -> int:
    watched, log, commands = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3]
    written = set()

    def record(path):
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(path))
            if path.startswith(watched + os.sep):
                written.add(os.path.relpath(path, watched))

    def hook(event, args):
        if event == "open" and (args[2] or 0) & WRITE_FLAGS or event == "open" and any(c in (args[1] or "")
                                                                                       for c in "wax+"):
            record(args[0])
        elif event in ("os.rename", "shutil.copyfile", "shutil.move"):
            record(args[1])
        elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.truncate"):
            record(args[0])

    with open(commands) as f:
        commands = json.load(f)
    sys.addaudithook(hook)
    from ensemble_distill import distributed, training
    from ensemble_distill.cli import main as cli

    distributed.init_from_env()  # as cli.main does (toy_store does not go through it)

    if "KILL_AFTER" in os.environ:
        text, epoch = os.environ["KILL_AFTER"].rsplit(":", 1)
        write_epoch = training._write_epoch

        def killed_after(run_dir, model, optimizer, scheduler, state, *args):
            write_epoch(run_dir, model, optimizer, scheduler, state, *args)
            if text in str(run_dir) and state["epoch"] == int(epoch):
                os._exit(3)

        training._write_epoch = killed_after  # rank 0 writes the epochs; torchrun then stops the other ranks

    status = 0
    for argv in commands:
        if argv[0] == "toy-store":
            toy_store(argv[1])
        else:
            status = status or cli(argv)
        with open(f"{log}.{os.environ.get('RANK', '0')}.json", "w") as f:
            json.dump(sorted(written), f)
    return status


if __name__ == "__main__":
    sys.exit(main())
