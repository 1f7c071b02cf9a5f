"""Slide readers, one file per format; each registers itself with :func:`pannuke_hf.slides.reading.register_reader`.

To add a format, write a module here with a :class:`~pannuke_hf.slides.reading.SlideReader`
subclass and a ``register_reader(...)`` call, and import it in
``pannuke_hf.slides.reading._load_builtin_readers``.
"""
