"""Loading of the request's image, kept in memory between clicks."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Mapping

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage, MapTransform

from lib.transforms.validation import check_image

logger = logging.getLogger(__name__)


class LRUCache:
    """A small thread-safe least-recently-used mapping."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


class CachedLoadImaged(MapTransform):
    """Load the image file named by ``data[key]`` as a channel-first float32 MetaTensor,
    reusing the copy loaded for an earlier click while the file is unchanged (same path,
    size and modification time); the image is checked (:func:`check_image`) when loaded,
    so a bad file fails with a ``ValueError`` on every request that names it. Writes ``data[f"{key}_meta_dict"]`` with the affine for
    MONAI Label's writer, and ``data["timing"]["load"]`` (s).

    The cached array is shared between requests: downstream transforms must not modify it
    in place (they crop and resample into new arrays).
    """

    def __init__(self, keys: KeysCollection, capacity: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self._cache = LRUCache(capacity)
        self._load = LoadImage(image_only=True, dtype=np.float32)
        self._channel_first = EnsureChannelFirst()

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        start = time.perf_counter()
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, str) or not path or not os.path.exists(path):
                raise FileNotFoundError(f"image file {path!r} does not exist")
            stat = os.stat(path)
            cache_key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
            image = self._cache.get(cache_key)
            if image is None:
                try:
                    image = self._channel_first(self._load(path))
                except Exception as e:  # not an image any reader understands: bad input, not a crash
                    raise ValueError(f"cannot read image {os.path.basename(path)!r}: {type(e).__name__}") from e
                if not isinstance(image, MetaTensor):
                    image = MetaTensor(image)
                # Content checks (dimensions, NaN, constant) once per file, not on every click.
                check_image(image.array, name=os.path.basename(path))
                self._cache.put(cache_key, image)
            d[key] = image
            d[f"{key}_meta_dict"] = {"affine": np.asarray(image.affine), "filename_or_obj": path}
            d["image_cache_key"] = cache_key
        d.setdefault("timing", {})["load"] = time.perf_counter() - start
        return d
