using System.Diagnostics.CodeAnalysis;
using Vism.Abstractions;
using Vism.Core.Virtqueues;

namespace Vism.Core;

public sealed partial class IsmDevice
{
    /// <summary>Chains popped from any queue and not completed yet.</summary>
    private int ChainsInFlight
    {
        get
        {
            int n = 0;
            foreach (DeviceQueue q in _queues) n += q.InFlight;
            return n;
        }
    }

    /// <summary>
    /// A device queue as the device and event plugins use it: the <see cref="SplitQueue"/> state
    /// bound to the connection's guest memory. A ring fault marks the device DEVICE_NEEDS_RESET.
    /// </summary>
    private sealed class DeviceQueue(IsmDevice device, int index) : IVirtqueue
    {
        private readonly HashSet<DescriptorChain> _inFlight = new(ReferenceEqualityComparer.Instance);

        public SplitQueue Ring { get; } = new(index);

        public bool Started;

        public int Index => index;

        public bool IsReady => Started && device.Running;

        public int InFlight => _inFlight.Count;

        public bool TryPop([NotNullWhen(true)] out DescriptorChain? chain)
        {
            chain = null;
            if (!IsReady)
                return false;
            if (device.ChainsInFlight >= device._limits.MaxInFlight)
            {
                // The device holds as many chains as it may: the driver's next one waits until it completes some.
                device.Counters.Increment("queue.in-flight-limit");
                return false;
            }
            switch (Ring.TryPop(device._services!.Memory, out DescriptorChain? popped, out string? fault))
            {
                case PopResult.Chain:
                    _inFlight.Add(popped!);
                    chain = popped!;
                    return true;
                case PopResult.Fault:
                    device.Fail(fault!, $"queue {index} at avail index {Ring.NextAvail}");
                    return false;
                default:
                    return false;
            }
        }

        public void Complete(DescriptorChain chain, uint written)
        {
            ArgumentNullException.ThrowIfNull(chain);
            if (!_inFlight.Remove(chain))
            {
                // Popped before a reset or queue stop, or never popped here: nothing to complete.
                device.Counters.Increment("queue.completion-dropped");
                return;
            }
            if (!IsReady)
                return;
            if (written > chain.WritableLength)
            {
                device.Counters.Increment("err.queue.written-too-long");
                written = chain.WritableLength;
            }
            ITransportServices services = device._services!;
            if (!Ring.TryAddUsed(services.Memory, chain.Head, written, out bool interrupt, out string? fault))
            {
                device.Fail(fault!, $"queue {index} at used index {Ring.NextUsed}");
                return;
            }
            if (interrupt)
                services.SignalQueue(index);
            else
                device.Counters.Increment("queue.interrupt-suppressed");
        }

        /// <summary>Stops the queue; returns the next available index it would have read.</summary>
        public ushort Stop()
        {
            ushort next = Ring.NextAvail;
            Ring.Reset();
            Started = false;
            _inFlight.Clear();
            return next;
        }
    }
}
