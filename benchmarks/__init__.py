"""Benchmarks of the compendium (a regular package: opacus installs a top-level ``benchmarks``
package into site-packages, which would otherwise shadow this folder for ``import benchmarks.…``)."""
