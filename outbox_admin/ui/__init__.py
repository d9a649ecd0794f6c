"""The Streamlit dashboard's pages: the only part of the package that imports streamlit."""
