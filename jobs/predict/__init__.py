"""`grec predict` and `grec recommend`: batch jobs that write a registered model's scores of a split
(predict.py) or users' top-k lists (recommend.py) to Parquet with Ray Data."""
