using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.PluginKit;

namespace Vism.MyPlugin;

/// <summary>
/// Each region is a memfd of its own, its pages claimed at once (so exhaustion is an ERR ack, never
/// a SIGBUS later) and given back by a hole punch when the region is freed. One instance per
/// device, created by the host through dependency injection.
/// </summary>
/// <remarks>Threading: <see cref="AllocatesOffLoop"/> is true, so <see cref="TryAllocate(ulong, ulong, out Refusal)"/> runs on
/// a thread-pool thread, concurrently with <see cref="Usage"/> and with blocks being released;
/// the accounting is therefore atomic. Everything else runs on the device's loop.</remarks>
/// <param name="options">This device's options (bound and validated).</param>
/// <param name="device">The device's layout.</param>
/// <param name="log">Logger.</param>
public sealed class MyMemoryBackend(MyOptions options, DeviceDescription device, ILogger<MyMemoryBackend> log) : IMemoryBackend
{
    private long _used;
    private long _highWater;

    /// <inheritdoc />
    public ulong PageSize => MyOptions.Page;

    /// <inheritdoc />
    public bool AllocatesOffLoop => true;

    /// <inheritdoc />
    public MemoryUsage Usage => new(options.Capacity, (ulong)Interlocked.Read(ref _used), (ulong)Interlocked.Read(ref _highWater));

    /// <inheritdoc />
    public IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal refusal)
    {
        // A refusal is a counter (the device counts it as err.<counter>) and a sentence for the log.
        if (length == 0 || length % PageSize != 0 || length > options.Capacity)
        {
            refusal = new Refusal(IMemoryBackend.AllocNoMemory, $"length {length} is not a positive multiple of {PageSize} within the capacity {options.Capacity}");
            return null;
        }
        long used = Interlocked.Add(ref _used, (long)length);
        if ((ulong)used > options.Capacity)
        {
            Interlocked.Add(ref _used, -(long)length);
            refusal = new Refusal(IMemoryBackend.AllocNoMemory, $"capacity exhausted: {used - (long)length} of {options.Capacity} bytes in use, {length} more wanted");
            return null;
        }
        MemFdBlock? block = MemFdBlock.TryCreate($"{MyPlugin.Kind}-{device.Name}-{token:x16}", length, out string? failure,
            onReleased: bytes => Interlocked.Add(ref _used, -(long)bytes));
        if (block is null)
        {
            Interlocked.Add(ref _used, -(long)length);
            refusal = new Refusal(IMemoryBackend.AllocNoMemory, failure ?? "the memfd could not be created");
            return null;
        }
        refusal = default;
        long high;
        while (used > (high = Interlocked.Read(ref _highWater)) && Interlocked.CompareExchange(ref _highWater, used, high) != high)
        {
        }
        log.LogDebug("{Kind}: device {Device} allocated {Length} bytes for token {Token:x16}", MyPlugin.Kind, device.Name, length, token);
        return block;
    }

    /// <summary>Nothing to free: every block owns its memfd and outlives the backend while a peer uses it.</summary>
    public void Dispose()
    {
    }
}
