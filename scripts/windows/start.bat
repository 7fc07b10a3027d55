@echo off
rem Starts the Agent in the background. The pid goes to log\agent.pid.
rem NOTE: Windows PowerShell 5.1 does not quote -ArgumentList items, so a package folder whose
rem path contains spaces splits the arguments; unpack the package to a path without spaces.
setlocal
set "ROOT=%~dp0..\.."
set "BIN=%ROOT%\bin\Windows\ipaas-agent.exe"
if not exist "%BIN%" (
    echo error: %BIN% is missing; unpack the whole Agent package again 1>&2
    exit /b 1
)
if not exist "%ROOT%\log" mkdir "%ROOT%\log"
if exist "%ROOT%\log\agent.pid" (
    echo The Agent may already be running; stop it with scripts\windows\stop.bat first 1>&2
    exit /b 1
)
powershell -NoProfile -Command ^
  "$p = Start-Process -FilePath '%BIN%' -WorkingDirectory '%ROOT%' -WindowStyle Hidden -PassThru" ^
  " -ArgumentList '--config','%ROOT%\configs\config.yaml','--logger','%ROOT%\configs\logger_config.yaml','--stop-file','%ROOT%\log\agent.stop'" ^
  " -RedirectStandardError '%ROOT%\log\agent.console.log';" ^
  " Start-Sleep -Seconds 1;" ^
  " if ($p.HasExited) { Write-Error 'the Agent exited right after starting; see log\agent.console.log'; exit 1 }" ^
  " Set-Content -Path '%ROOT%\log\agent.pid' -Value $p.Id; Write-Output ('Agent started (pid ' + $p.Id + ')')"
exit /b %ERRORLEVEL%
