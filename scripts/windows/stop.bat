@echo off
rem Stops the Agent started by start.bat, by the pid in log\agent.pid.
setlocal
set "ROOT=%~dp0..\.."
if not exist "%ROOT%\log\agent.pid" (
    echo The Agent is not running (no log\agent.pid).
    exit /b 0
)
set /p PID=<"%ROOT%\log\agent.pid"
rem NOTE: a console program started hidden gets no Ctrl+C from taskkill, so in-flight
rem streams are not drained on Windows; the process is ended after a polite request.
taskkill /PID %PID% >nul 2>&1
powershell -NoProfile -Command "Wait-Process -Id %PID% -Timeout 10 -ErrorAction SilentlyContinue"
taskkill /F /PID %PID% >nul 2>&1
del "%ROOT%\log\agent.pid"
echo Agent stopped.
