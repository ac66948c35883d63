"""lbcp's admin REST API (FastAPI) and command-line client."""
