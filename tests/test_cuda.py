"""The training and decoding paths on a CUDA device (bfloat16 autocast); skipped on machines without one."""
import pytest
import torch

from tests.conftest import logged_losses, tiny_config
from transformer import checkpoint
from transformer.training import train
from transformer.translation import Translator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_run_validates_resumes_and_decodes_like_the_cpu(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))

    def config(*overrides):  # validation with BLEU and attention images every 3 steps
        return tiny_config(small_corpus, "train.precision=auto", "train.valid_every=3", "train.valid_bleu=true",
                           *overrides)

    train(config("train.max_steps=12", "train.save_every=100"), tmp_path / "whole", "cuda")
    train(config("train.max_steps=5"), tmp_path / "split", "cuda")  # stops, saves step 5
    train(config("train.max_steps=12"), tmp_path / "split", "cuda")  # resumes from a checkpoint loaded onto the GPU
    whole, split = logged_losses(tmp_path / "whole"), logged_losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 13))
    # GPU reductions may add in another order, so equal to rounding, not bit for bit
    torch.testing.assert_close([split[s] for s in range(6, 13)], [whole[s] for s in range(6, 13)], rtol=1e-4, atol=0)

    path = checkpoint.step_checkpoints(tmp_path / "split" / "checkpoints")[-1]
    translator = Translator.from_checkpoint(path, "cuda", ["decode.beam_size=3"])
    sources = translator.encode(["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee am Fluss."])
    cached = translator.translate_ids(sources, use_cache=True)
    uncached = translator.translate_ids(sources, use_cache=False)
    assert [h[0].tokens for h in cached] == [h[0].tokens for h in uncached]
