using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Vism.Host.Composition;
using Vism.Host.Config;
using Vism.Host.Plugins;

namespace Vism.Host.Commands;

/// <summary><c>vism run</c>: validate, compose, start every device, serve until SIGINT/SIGTERM, stop cleanly.</summary>
public static class RunCommand
{
    public static async Task<int> RunAsync(string file, string[] extraPlugins, LogLevel? logLevel, TextWriter output, TextWriter error, CancellationToken ct)
    {
        var loaded = Cli.Load(file, extraPlugins, error);
        if (loaded is not var (config, catalog)) return ExitCodes.BadConfig;
        using (catalog)
        using (ILoggerFactory logs = Logging.Create(logLevel ?? config.Host.LogLevel))
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

            var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using PosixSignalRegistration sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.TrySetResult(); });
            using PosixSignalRegistration sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.TrySetResult(); });
            using CancellationTokenRegistration cancel = ct.Register(() => stop.TrySetResult());

            HostRuntime runtime;
            try
            {
                runtime = await HostRuntime.StartAsync(config, logs).ConfigureAwait(false);
            }
            catch (DeviceStartException ex)
            {
                log.LogCritical("{Reason}; vism stops", ex.Message);
                return ExitCodes.Failed;
            }
            log.LogInformation("serving {Count} device(s); stop with SIGINT or SIGTERM", runtime.Devices.Count);
            await stop.Task.ConfigureAwait(false);
            log.LogInformation("stopping");
            await runtime.DisposeAsync().ConfigureAwait(false);
            log.LogInformation("stopped");
        }
        return ExitCodes.Ok;
    }
}
