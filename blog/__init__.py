"""The series' Jekyll site, generated from the executed notebooks (not part of nanogpt_lib).

    posts     notebooks/NN_name.ipynb -> _posts/ and assets/notebooks/: python -m blog.posts
    markdown  prose-only rewrites of a notebook's Markdown for kramdown (math, links, title)
    links     where a notebook's relative links go in its post
"""
