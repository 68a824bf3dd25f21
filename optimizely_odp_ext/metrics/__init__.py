"""``odp_stats()`` where people watch their services: Prometheus and OpenTelemetry.

Each exporter is its own module and imports its library only there:

- :mod:`optimizely_odp_ext.metrics.prometheus` (``pip install 'optimizely-odp-ext[prometheus]'``)
- :mod:`optimizely_odp_ext.metrics.otel` (``pip install 'optimizely-odp-ext[otel]'``)

Both read the same table (:mod:`optimizely_odp_ext.metrics.schema`). Importing this
package imports neither library.
"""
