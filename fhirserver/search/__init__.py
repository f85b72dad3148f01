"""FHIR search: parameters as data, index extraction, and query building.

- :mod:`fhirserver.search.params`: the search parameters of each type (``REGISTRY``), as data.
- :mod:`fhirserver.search.paths`: the small element-path language the parameters use.
- :mod:`fhirserver.search.types`: one module per parameter type (string, token, reference,
  date); each knows how to turn element values into index rows, parse a search value,
  and express a match as SQL over its index table.
- :mod:`fhirserver.search.indexing`: ``extract`` (pure) and ``write_index`` / ``delete_index``.
- :mod:`fhirserver.search.query`: ``parse_search`` and ``run_search`` with keyset paging.

Nothing here imports Flask: the web layer and the repository call in.
"""
