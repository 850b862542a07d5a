using Vism.Host.Commands;
using Vism.Native;

// First, before Console, Process or PosixSignalRegistration start .NET's signal handling: vism's
// interface is SIGINT and SIGTERM (stop) and SIGHUP (reload), however it was started (a script's
// background job ignores SIGINT, nohup ignores SIGHUP, and .NET would keep them ignored).
// README.md, "Signals, however vism was started".
ProcessSignals.Unignore(ProcessSignals.SigHup, ProcessSignals.SigInt, ProcessSignals.SigTerm);
return await Cli.InvokeAsync(args, Console.Out, Console.Error);
