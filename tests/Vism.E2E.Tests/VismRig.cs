using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core;
using Vism.Memory.File;
using Vism.Native;
using Vism.Testing;
using Vism.Transport.VhostUser;

namespace Vism.E2E.Tests;

/// <summary>
/// vism in the test process: one <see cref="IsmHost"/>, devices served by the vhost-user
/// transport on real Unix sockets, regions in real files (the <c>file</c> memory plugin on
/// tmpfs), each device on an epoll loop. What <c>vism run</c> composes from a config.
/// </summary>
internal sealed class VismRig : IAsyncDisposable
{
    public const ulong MiB = 1 << 20;
    private readonly TempDir _dir = new("e2e");
    private readonly EventLoop _loop = new("e2e-loop");
    private readonly List<(IsmDevice Device, VhostUserTransport Transport, IMemoryBackend Memory)> _devices = [];
    private readonly Dictionary<IsmDevice, DeviceCounters> _counters = [];
    private readonly Dictionary<IsmDevice, WatchedMemory> _memory = [];
    private readonly ILoggerFactory _logs;

    public VismRig(Action<string> log)
    {
        Log = new LineLoggerProvider(log);
        _logs = LoggerFactory.Create(b => b.AddProvider(Log).SetMinimumLevel(LogLevel.Debug));
        Host = new IsmHost(new IsmHostOptions { Gid = 0xe2e }, _logs);
    }

    public IsmHost Host { get; }

    public LineLoggerProvider Log { get; }

    public string Directory => _dir.Path;

    /// <summary>Adds a device: a 16 MiB window (QEMU BAR 4) of 1 MiB regions with 1-byte notify slots.</summary>
    public (IsmDevice Device, string Socket) AddDevice(string name, IEventChannel? events = null)
    {
        DeviceDescription description = DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 * MiB, MiB, 1);
        var counters = new DeviceCounters();
        var host = new HostDescription { Gid = Host.Gid, StateDirectory = _dir.Path, SocketDirectory = _dir.Path };
        var memory = new WatchedMemory(new FileMemoryBackend(new FileMemoryOptions { Directory = _dir["regions"] }, description, host,
                                                             counters, _logs.CreateLogger<FileMemoryBackend>()));
        IsmDevice device = Host.AddDevice(description, _loop, memory, events, counters);
        var options = new VhostUserOptions { SocketPath = _dir[name + ".sock"] };
        var transport = new VhostUserTransport(options, description, host, _loop, counters, _logs.CreateLogger<VhostUserTransport>());
        _loop.InvokeAsync(() => transport.Start(device)).GetAwaiter().GetResult();
        _devices.Add((device, transport, memory));
        _counters[device] = counters;
        _memory[device] = memory;
        return (device, transport.Endpoint);
    }

    /// <summary>Maps the region with <paramref name="token"/> that <paramref name="device"/>'s memory
    /// backend holds, as vism sees it (the same file the guest reaches through its BAR).</summary>
    public Mapping MapRegion(IsmDevice device, ulong token)
    {
        IMemoryBlock block = _memory[device].Blocks.TryGetValue(token, out IMemoryBlock? b)
            ? b : throw new InvalidOperationException($"device {device.Description.Name} allocated no region with token 0x{token:x}");
        return Mapping.Map(block.Handle, block.Offset, block.Length);
    }

    /// <summary>The counters of <paramref name="device"/>.</summary>
    public DeviceCounters Counters(IsmDevice device) => _counters[device];

    /// <summary>Every device's counters, one line per device (for test output).</summary>
    public string DescribeCounters() => string.Join('\n', _devices.Select(d =>
        $"counters of {d.Device.Description.Name}: " + string.Join(", ", _counters[d.Device].Snapshot().OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}"))));

    /// <summary>Runs <paramref name="work"/> on the devices' loop.</summary>
    public T On<T>(Func<T> work) => _loop.InvokeAsync(work).GetAwaiter().GetResult();

    public async ValueTask DisposeAsync()
    {
        foreach (var (device, transport, _) in _devices)
        {
            await transport.DisposeAsync();
            await _loop.InvokeAsync(() => Host.RemoveDevice(device));
        }
        foreach (var (_, _, memory) in _devices)
            memory.Dispose();
        Host.Dispose();
        _loop.Dispose();
        _logs.Dispose();
        _dir.Dispose();
    }
}

/// <summary>Sends vism's log lines to the test output and keeps them for assertions.</summary>
internal sealed class LineLoggerProvider(Action<string> write) : ILoggerProvider
{
    public ConcurrentQueue<string> Lines { get; } = new();

    public ILogger CreateLogger(string categoryName) => new LineLogger(this, categoryName[(categoryName.LastIndexOf('.') + 1)..]);

    public void Dispose() { }

    private void Write(string line)
    {
        Lines.Enqueue(line);
        try { write(line); } catch (InvalidOperationException) { } // the test already finished
    }

    private sealed class LineLogger(LineLoggerProvider owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Debug;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner.Write($"[vism {logLevel.ToString().ToLowerInvariant()[..4]} {category}] {formatter(state, exception)}{(exception is null ? "" : " " + exception.Message)}");
    }
}

/// <summary>The device's real memory backend, remembering each block by token so a test can look
/// into a region from vism's side.</summary>
internal sealed class WatchedMemory(IMemoryBackend inner) : IMemoryBackend
{
    public ConcurrentDictionary<ulong, IMemoryBlock> Blocks { get; } = new();

    public ulong PageSize => inner.PageSize;

    public MemoryUsage Usage => inner.Usage;

    public IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal failure)
    {
        IMemoryBlock? block = inner.TryAllocate(length, token, out failure);
        if (block is not null) Blocks[token] = block;
        return block;
    }

    public IReadOnlyList<RecoveredBlock> Recover() => inner.Recover();

    public void Dispose() => inner.Dispose();
}
