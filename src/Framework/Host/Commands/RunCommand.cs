using System.Runtime.InteropServices;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Host.Composition;
using Vism.Host.Config;
using Vism.Host.Plugins;
using Vism.Native;

namespace Vism.Host.Commands;

/// <summary>
/// <c>vism run</c>: validate, compose, start every device, tell the service manager it is ready,
/// serve until SIGINT/SIGTERM, stop cleanly. SIGHUP (or <c>vism reload</c>) re-reads the config and
/// applies it (<see cref="HostRuntime.ApplyAsync"/>); an invalid file is refused and logged.
/// </summary>
public static class RunCommand
{
    public static async Task<int> RunAsync(string file, string[] extraPlugins, LogLevel? logLevel, LogFormat? logFormat,
        TextWriter output, TextWriter error, CancellationToken ct)
    {
        // First of all: SIGHUP's default action ends the process, and a reload may be asked for at any time.
        var reloads = Channel.CreateUnbounded<TaskCompletionSource<ReloadResult>?>();
        using PosixSignalRegistration sighup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c =>
        {
            c.Cancel = true;
            reloads.Writer.TryWrite(null);
        });
        var loaded = Cli.Load(file, extraPlugins, error);
        if (loaded is not var (config, catalog)) return ExitCodes.BadConfig;
        using (catalog)
        using (ILoggerFactory logs = Logging.Create(logLevel ?? config.Host.LogLevel, Logging.Choose(logFormat, config.Host.LogFormat)))
        using (SystemdNotifier? notify = SystemdNotifier.FromEnvironment())
        {
            ILogger log = logs.CreateLogger("Vism.Host");
            foreach (PluginFailure f in catalog.Failures) log.LogWarning("{Failure}", f.ToString());
            try
            {
                log.LogDebug("RLIMIT_NOFILE soft limit is {Limit}", Vism.Native.Fd.RaiseOpenFileLimit());
            }
            catch (Vism.Native.PosixException ex)
            {
                log.LogWarning("cannot raise RLIMIT_NOFILE ({Error}); the host may run out of file descriptors with many regions", ex.Message);
            }
            (IReadOnlyList<string> inherited, IReadOnlyList<string> refused) = InheritedSockets.AdoptFromEnvironment();
            foreach (string line in refused) log.LogWarning("{Refused}", line);
            if (inherited.Count > 0) log.LogInformation("socket activation: inherited {Sockets}", string.Join(", ", inherited));

            var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using PosixSignalRegistration sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.TrySetResult(); });
            using PosixSignalRegistration sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.TrySetResult(); });
            using CancellationTokenRegistration cancel = ct.Register(() => stop.TrySetResult());

            HostRuntime runtime;
            try
            {
                runtime = await HostRuntime.StartAsync(config, logs, optionTypes: catalog.Registrations.Select(r => r.Options.Type),
                    inherited: inherited).ConfigureAwait(false);
            }
            catch (DeviceStartException ex)
            {
                log.LogCritical("{Reason}; vism stops", ex.Message);
                Report(notify, log, $"STATUS=failed: {ex.Message}\nERRNO=1");
                return ExitCodes.Failed;
            }
            runtime.ReloadHandler = () =>
            {
                var done = new TaskCompletionSource<ReloadResult>(TaskCreationOptions.RunContinuationsAsynchronously);
                return reloads.Writer.TryWrite(done) ? done.Task : Task.FromResult(ReloadResult.Refused(["vism is stopping"]));
            };
            log.LogInformation("serving {Count} device(s); stop with SIGINT or SIGTERM, reload with SIGHUP", runtime.Devices.Count);
            Report(notify, log, $"READY=1\nSTATUS={Serving(runtime)}\nMAINPID={Environment.ProcessId}");
            using Timer? watchdog = notify?.WatchdogInterval is TimeSpan interval ? Watchdog(runtime, notify, log, interval / 2) : null;

            using var stopped = new CancellationTokenSource();
            // The stop watcher cancels the reload reader; it is awaited, not disposed, because the loop
            // below can leave while Cancel() is still running on the watcher's thread.
            Task watcher = stop.Task.ContinueWith(_ => stopped.Cancel(), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
            while (true)
            {
                TaskCompletionSource<ReloadResult>? request;
                try
                {
                    request = await reloads.Reader.ReadAsync(stopped.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
                ReloadResult result = await ReloadAsync(file, catalog, runtime, notify, log).ConfigureAwait(false);
                request?.TrySetResult(result);
            }
            await watcher.ConfigureAwait(false);
            reloads.Writer.TryComplete();
            while (reloads.Reader.TryRead(out TaskCompletionSource<ReloadResult>? pending))
                pending?.TrySetResult(ReloadResult.Refused(["vism is stopping"]));
            Report(notify, log, "STOPPING=1\nSTATUS=stopping");
            log.LogInformation("stopping");
            await runtime.DisposeAsync().ConfigureAwait(false);
            log.LogInformation("stopped");
        }
        return ExitCodes.Ok;
    }

    /// <summary>Re-reads <paramref name="file"/> and applies it; an invalid file changes nothing.</summary>
    private static async Task<ReloadResult> ReloadAsync(string file, PluginCatalog catalog, HostRuntime runtime, SystemdNotifier? notify, ILogger log)
    {
        Report(notify, log, $"RELOADING=1\n{SystemdNotifier.MonotonicNow()}\nSTATUS=reloading {file}");
        log.LogInformation("reloading {File}", file);
        ReloadResult result;
        ConfigLoader loader = ConfigLoader.Parse(file);
        VismConfig? next = loader.Root is null ? null : loader.BindDevices(catalog);
        if (next is null)
        {
            List<string> errors = loader.Errors.Sorted().Select(e => e.ToString()).ToList();
            foreach (string e in errors) log.LogError("reload refused: {Error}", e);
            result = ReloadResult.Refused(errors);
        }
        else
        {
            try
            {
                result = await runtime.ApplyAsync(next).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                result = ReloadResult.Refused([$"reload failed: {ex.Message}"]);
            }
        }
        if (result.Ok) log.LogInformation("reload: {Result}", result.ToString());
        else log.LogError("reload: {Result}", result.ToString());
        Report(notify, log, $"READY=1\nSTATUS={Serving(runtime)}");
        return result;
    }

    private static string Serving(HostRuntime runtime) =>
        $"serving {runtime.Devices.Count} device(s): {string.Join(", ", runtime.Devices.Select(d => d.Settings.Name))}";

    private static void Report(SystemdNotifier? notify, ILogger log, string state)
    {
        if (notify?.Notify(state) is string failure) log.LogWarning("{Failure}", failure);
    }

    /// <summary>Sends WATCHDOG=1 every <paramref name="period"/> while every device loop answers within it:
    /// a loop stuck in a handler stops the pings, and systemd restarts vism.</summary>
    private static Timer Watchdog(HostRuntime runtime, SystemdNotifier notify, ILogger log, TimeSpan period) =>
        new(async _ =>
        {
            try
            {
                Task ping = Task.WhenAll(runtime.Devices.Select(d => d.Loop).Distinct().Select(l => l.InvokeAsync(() => true)));
                if (await Task.WhenAny(ping, Task.Delay(period)).ConfigureAwait(false) == ping) Report(notify, log, "WATCHDOG=1");
                else log.LogError("watchdog: a device loop did not answer within {Period}; not pinging the service manager", period);
            }
            catch (Exception ex)
            {
                log.LogError("watchdog: {Error}", ex.Message);
            }
        }, null, TimeSpan.Zero, period);
}
