@echo off
rem Stops the Agent started by start.bat, by the pid in log\agent.pid.
setlocal
set "ROOT=%~dp0..\.."
if not exist "%ROOT%\log\agent.pid" (
    echo The Agent is not running ^(no log\agent.pid^).
    exit /b 0
)
set /p PID=<"%ROOT%\log\agent.pid"
rem A program started hidden gets no Ctrl+C, so the Agent watches log\agent.stop instead:
rem creating it drains in-flight streams, as SIGTERM does on Linux and macOS. After 40 s
rem (IPAAS_STOP_TIMEOUT) the process is ended without draining.
if not defined IPAAS_STOP_TIMEOUT set "IPAAS_STOP_TIMEOUT=40"
type nul > "%ROOT%\log\agent.stop"
echo Stopping the Agent (pid %PID%), waiting for streams to drain...
powershell -NoProfile -Command ^
  "$p = Get-Process -Id %PID% -ErrorAction SilentlyContinue;" ^
  " if ($p -and -not $p.WaitForExit(%IPAAS_STOP_TIMEOUT% * 1000)) {" ^
  " Stop-Process -Id %PID% -Force; Write-Output 'The Agent did not stop in time and was ended without draining.' }"
if exist "%ROOT%\log\agent.stop" del "%ROOT%\log\agent.stop"
del "%ROOT%\log\agent.pid"
echo Agent stopped.
