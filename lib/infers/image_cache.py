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

from lib.transforms.intensity import Luminanced
from lib.transforms.validation import InvalidInputError, check_image

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


class ImageLoader:
    """Loads image files as channel-first float32 MetaTensors (2D RGB/RGBA as luminance:
    :class:`lib.transforms.intensity.Luminanced`), checked once
    (:func:`check_image`) and kept in an LRU cache keyed by path, size and modification time.

    One loader is shared by all infer tasks, so the 2D and 3D models reuse one copy, and a
    file can be loaded ahead of the first click (:meth:`prefetch`). A request that arrives
    while the same file is being loaded waits for that load instead of repeating it.
    """

    def __init__(self, capacity: int = 4) -> None:
        self._cache = LRUCache(capacity)
        self._read = LoadImage(image_only=True, dtype=np.float32)
        self._channel_first = EnsureChannelFirst()
        self._luminance = Luminanced("image")
        self._locks: dict[tuple, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @staticmethod
    def cache_key(path: str) -> tuple:
        """``(real path, size, mtime)``; ``FileNotFoundError`` when ``path`` names no file."""
        if not isinstance(path, str) or not path or not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path!r} does not exist")
        stat = os.stat(path)
        return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)

    def load(self, path: str) -> tuple[MetaTensor, tuple]:
        """The checked image ``(1, *spatial)`` float32 and its cache key. Raises
        ``FileNotFoundError`` for a missing file and :class:`InvalidInputError` for one that is not a
        readable, non-constant 2D/3D image."""
        key = self.cache_key(path)
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            image = self._cache.get(key)
            if image is None:
                image = self._read_checked(path)
                self._cache.put(key, image)
        with self._locks_guard:
            self._locks.pop(key, None)
        return image, key

    def _read_checked(self, path: str) -> MetaTensor:
        start = time.perf_counter()
        try:
            image = self._channel_first(self._read(path))
        except MemoryError:  # the server's fault, not the file's
            raise
        except Exception as e:  # not an image any reader understands: bad input, not a crash
            raise InvalidInputError(f"cannot read image {os.path.basename(path)!r}: {type(e).__name__}") from e
        if not isinstance(image, MetaTensor):
            image = MetaTensor(image)
        image = self._luminance({"image": image})["image"]  # a 2D colour image: one channel
        check_image(image.array, name=os.path.basename(path))
        logger.debug("loaded %s in %.2f s", path, time.perf_counter() - start)
        return image

    def prefetch(self, path: str) -> threading.Thread:
        """Load ``path`` into the cache in a background thread (errors are logged; the
        request that then names the file reports them)."""

        def run() -> None:
            try:
                self.load(path)
            except (FileNotFoundError, ValueError) as e:
                logger.info("prefetch of %s skipped: %s", path, e)

        thread = threading.Thread(target=run, name="midepseg-prefetch", daemon=True)
        thread.start()
        return thread


SHARED_LOADER = ImageLoader()


class CachedLoadImaged(MapTransform):
    """Load the image file named by ``data[key]`` through an :class:`ImageLoader` (by
    default the process-wide one), so later clicks on the same unchanged file reuse the
    loaded, checked copy. Writes ``data[f"{key}_meta_dict"]`` with the affine for MONAI
    Label's writer, ``data["image_cache_key"]`` and ``data["timing"]["load"]`` (s).

    The cached array is shared between requests: downstream transforms must not modify it
    in place (they crop and resample into new arrays).
    """

    def __init__(self, keys: KeysCollection, loader: ImageLoader | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = loader or SHARED_LOADER

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        start = time.perf_counter()
        for key in self.key_iterator(d):
            path = d[key]
            image, cache_key = self.loader.load(path)
            d[key] = image
            d[f"{key}_meta_dict"] = {"affine": np.asarray(image.affine), "filename_or_obj": path}
            d["image_cache_key"] = cache_key
        d.setdefault("timing", {})["load"] = time.perf_counter() - start
        return d
