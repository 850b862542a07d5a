using System.Buffers.Binary;
using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;

namespace Vism.Core.Tests;

/// <summary>
/// The test double at the event-channel seam: records every call the device makes. With an eventq
/// (<see cref="Features.IsmEventVq"/> and one queue) it also writes each update at once as a
/// one-offset <c>virtio_ism_event</c>, so driver-side event reception can be tested end to end.
/// </summary>
internal sealed class RecordingEventChannel(ulong features, int queueCount = 0) : IEventChannel
{
    private readonly SemaphoreSlim _updated = new(0);
    private readonly ConcurrentQueue<ulong> _updates = new();
    private readonly Queue<ulong> _undelivered = new();

    public static RecordingEventChannel Irq() => new(Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.IsmEventIrq));

    public static RecordingEventChannel Vq() => new(Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.IsmEventVq), 1);

    public ulong Features { get; } = features;

    public int QueueCount { get; } = queueCount;

    public IEventContext? Context { get; private set; }

    public int Activations;
    public int Deactivations;
    public readonly ConcurrentQueue<ulong> Detached = new();
    public readonly ConcurrentDictionary<ulong, ulong> Vectors = new();
    public Func<ulong, ulong, string?>? RefuseVector { get; set; }

    /// <summary>Offsets passed to <see cref="OnRegionUpdated"/>, in order.</summary>
    public IReadOnlyList<ulong> Updates => [.. _updates];

    public void Activate(IEventContext context)
    {
        Context = context;
        Interlocked.Increment(ref Activations);
    }

    public void Deactivate()
    {
        Context = null;
        _undelivered.Clear();
        Interlocked.Increment(ref Deactivations);
    }

    public void OnRegionUpdated(ulong offset)
    {
        _updates.Enqueue(offset);
        _updated.Release();
        if (Context is not null && Vectors.TryGetValue(offset, out ulong vector))
            Context.SignalVector((int)vector);
        _undelivered.Enqueue(offset);
        Flush();
    }

    public void OnRegionDetached(ulong offset)
    {
        Detached.Enqueue(offset);
        Vectors.TryRemove(offset, out _);
    }

    public bool TryBindVector(ulong offset, ulong vector, out string? failure)
    {
        failure = RefuseVector?.Invoke(offset, vector);
        if (failure is null && Context is not null && vector >= (ulong)Context.VectorCount)
            failure = $"vector {vector} >= {Context.VectorCount}";
        if (failure is not null)
            return false;
        Vectors[offset] = vector;
        return true;
    }

    public void OnQueueNotified(int queueIndex) => Flush();

    private void Flush()
    {
        IVirtqueue? q = Context?.GetQueue(Virtio.EventQueue);
        if (q is null || Context!.Memory is not { } memory)
            return;
        Span<byte> record = stackalloc byte[16];
        while (_undelivered.Count > 0 && q.TryPop(out DescriptorChain? chain))
        {
            ulong offset = _undelivered.Dequeue();
            BinaryPrimitives.WriteUInt64LittleEndian(record, 1);
            BinaryPrimitives.WriteUInt64LittleEndian(record[8..], offset);
            int written = chain.Write(memory, 0, record);
            q.Complete(chain, written < 0 ? 0 : (uint)written);
        }
    }

    /// <summary>Waits until <paramref name="count"/> updates in total were recorded.</summary>
    public bool WaitForUpdates(int count, TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (_updates.Count < count)
        {
            long left = deadline - Environment.TickCount64;
            if (left <= 0 || !_updated.Wait(TimeSpan.FromMilliseconds(left)))
                return _updates.Count >= count;
        }
        return true;
    }

    public void Dispose() => _updated.Dispose();
}
