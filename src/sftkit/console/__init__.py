"""``sft console``: a local web page to configure, launch, watch and compare runs, and chat.

The server is FastAPI; the page is plain HTML/JS/CSS shipped in ``static/`` (no CDN, works
offline). Everything the page does goes through the project's own modules: the data check
and statistics (``sftkit.data``), the config schema (``sftkit.core.config``), the memory estimate
(``sftkit.estimate``), training as ``python -m sftkit.cli train`` in a subprocess, evaluation
and the report as ``sft eval`` / ``sft report``, chat through ``sftkit.infer.engine.Engine``.

    from sftkit.console.app import create_app
    app = create_app(runs="runs", token=None)   # then any ASGI server (sft console uses uvicorn)

docs/console.md describes the page, the API and the files a console run adds to its folder.
"""
