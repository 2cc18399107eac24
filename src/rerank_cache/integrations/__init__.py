"""Framework adapters backed by the score cache (optional extras).

* :mod:`rerank_cache.integrations.langchain` — ``CachedDashScopeRerank``, a LangChain
  ``BaseDocumentCompressor`` (``pip install 'rerank-cache[langchain]'``).
* :mod:`rerank_cache.integrations.llama_index` — ``CachedDashScopeRerank``, a LlamaIndex
  ``BaseNodePostprocessor`` (``pip install 'rerank-cache[llama-index]'``).

Nothing is imported here, so ``import rerank_cache`` never imports either framework; import
the module of the framework you use.
"""
