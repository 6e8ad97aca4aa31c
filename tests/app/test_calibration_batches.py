"""calib.image_seed: the calibration images drawn from the whole calib split by a seed."""
import torch

from lightning_ptq.pipeline import calibration_batches


class _Split:
    """A calib split of 20 images whose pixels hold their index, in batches of 6."""

    batch_size = 4

    def __init__(self, dict_targets: bool):
        self.dict_targets = dict_targets

    def calib_dataloader(self):
        for start in range(0, 20, 6):
            idx = torch.arange(start, min(start + 6, 20))
            images = idx.float()[:, None, None, None].expand(-1, 1, 2, 2)
            targets = {"id": idx} if self.dict_targets else [{"id": int(i)} for i in idx]
            yield images, targets


def _ids(batches, dict_targets):
    images = torch.cat([b[0][:, 0, 0, 0] for b in batches]).long().tolist()
    targets = [int(i) for b in batches for i in (b[1]["id"] if dict_targets else [t["id"] for t in b[1]])]
    assert images == targets  # each image keeps its own target
    return images


def test_without_a_seed_the_first_images_of_the_split_are_taken():
    assert _ids(calibration_batches(_Split(False), 8), False) == list(range(8))


def test_a_seed_draws_images_from_the_whole_split_the_same_way_each_time():
    for dict_targets in (False, True):
        split = _Split(dict_targets)
        first = calibration_batches(split, 12, seed=0)
        assert [len(b[0]) for b in first] == [4, 4, 4]  # the data module's batch size
        ids = _ids(first, dict_targets)
        assert len(set(ids)) == 12 and max(ids) >= 12  # distinct, and not only the first 12
        assert ids == _ids(calibration_batches(split, 12, seed=0), dict_targets)
        assert ids != _ids(calibration_batches(split, 12, seed=1), dict_targets)
