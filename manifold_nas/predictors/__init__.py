"""Readable accuracy and cost models of genotypes (shared by FOX and the trial filters).

==================  ==========================================================
``linear.py``       encodings, features, OLS and Lasso predictors, reports
``performance.py``  accuracy and cost models together, their quality, reports
==================  ==========================================================
"""
