using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Native;

namespace Vism.Fuzz;

/// <summary>
/// A real host (Core's device model, a real loop, an in-memory backend) whose log is watched: an
/// exception that escapes to a loop, a device that fails with an internal error or any critical
/// entry is a finding. Made once per fuzzing process; the targets reset what they touch.
/// </summary>
internal sealed class Rig : IDisposable
{
    public const ulong MiB = 1 << 20;

    public Rig(int loops = 1)
    {
        Loops = Enumerable.Range(0, loops).Select(i => new EventLoop($"fuzz-loop-{i}", Logs.CreateLogger("Vism.Loop"))).ToArray();
        Host = new IsmHost(new IsmHostOptions { Gid = 0xf022 }, Logs);
    }

    public WatchedLogs Logs { get; } = new();

    public EventLoop[] Loops { get; }

    public IsmHost Host { get; }

    /// <summary>Adds an ISM device with a small in-memory backend on loop <paramref name="loop"/>.</summary>
    public IsmDevice AddDevice(string name, int loop = 0, IDeviceCounters? counters = null) =>
        Host.AddDevice(DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 * MiB, MiB, 1), Loops[loop],
            new InMemoryBackend(8 * MiB), events: null, counters ?? new DeviceCounters());

    /// <summary>Waits until what is already posted to every loop has run (twice: work posted by work).</summary>
    public void Settle()
    {
        foreach (EventLoop l in Loops)
            for (int i = 0; i < 2; i++)
                l.InvokeAsync(() => { }).WaitAsync(TimeSpan.FromSeconds(30)).GetAwaiter().GetResult();
    }

    /// <summary>Throws the first finding the log recorded.</summary>
    public void Check() => Logs.ThrowIfBroken();

    public void Dispose()
    {
        Host.Dispose();
        foreach (EventLoop l in Loops) l.Dispose();
    }
}

/// <summary>Keeps nothing but what breaks a contract: an exception escaping to a loop (category
/// Vism.Loop, error or worse), a critical entry anywhere, or an "internal" device failure.</summary>
internal sealed class WatchedLogs : ILoggerFactory
{
    private readonly ConcurrentQueue<string> _broken = new();

    public void ThrowIfBroken()
    {
        if (_broken.TryDequeue(out string? first))
        {
            _broken.Clear();
            throw new FuzzFinding(first);
        }
    }

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void AddProvider(ILoggerProvider provider)
    {
    }

    public void Dispose()
    {
    }

    private sealed class Logger(WatchedLogs owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (logLevel < LogLevel.Error) return;
            string message = formatter(state, exception);
            bool loopEscape = category == "Vism.Loop";
            bool bug = logLevel == LogLevel.Critical || exception is not null || message.Contains("internal", StringComparison.Ordinal);
            if (loopEscape || bug)
                owner._broken.Enqueue($"[{category}] {logLevel}: {message}{(exception is null ? "" : $" ({exception.GetType().Name}: {exception.Message})")}");
        }
    }
}
