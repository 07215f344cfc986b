"""The floor to compare status latency with: plain FastAPI on uvicorn answering the same body
from a dict. Run as `python -m bench.floor PORT`."""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()
JOBS = {1: {"status": "ongoing", "job_id": 1}}


@app.get("/api/status")
async def status(jobid: str | None = None) -> JSONResponse:
    body = JOBS.get(int(jobid)) if jobid and jobid.isdigit() else None
    return JSONResponse(body if body is not None else {}, status_code=200 if body else 400)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
