"""The Batch API: files in, results out (``/v1/files``, ``/v1/batches``).

``protocol`` the OpenAI shapes, ``files`` the contents (fsspec), ``store`` the metadata and each
line's result (SQLite), ``execute`` one line through the online route's checks and handles,
``runner`` the driver, ``service`` the operations the routes call, ``ray_driver`` the service as
one Ray actor per application, ``routes`` the HTTP routes.
"""
