from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100, unique=True)


class Note(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="notes")
    body = models.TextField()
    worker = models.IntegerField(default=-1)
