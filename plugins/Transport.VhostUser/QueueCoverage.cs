using Vism.VhostUser;

namespace Vism.Transport.VhostUser;

/// <summary>
/// Notices a frontend that set up fewer queues than the device has: QEMU started with a
/// <c>num_vqs</c> too small (1 for a device with an eventq). QEMU announces its queues when it connects
/// (SET_VRING_CALL, and SET_VRING_ERR, for each of its <c>num_vqs</c> queues, before anything else);
/// the device's other queues are then never set up and the guest driver fails later ("queue 1 is
/// missing") without the backend being told. The check runs once, at the first request after that
/// announcement, so the operator reads the cause and the fix in vism's log.
/// </summary>
internal sealed class QueueCoverage(int deviceQueues, int vectors)
{
    private int _announced;
    private bool _checked;

    /// <summary>Observes one request; returns the warning the first time the announced queues fall short.</summary>
    /// <param name="request">The request.</param>
    /// <param name="payload">Its payload (the queue index is in its first byte for the ring requests).</param>
    public string? Observe(FrontendRequest request, ReadOnlySpan<byte> payload)
    {
        if (_checked) return null;
        if (request is FrontendRequest.SetVringCall or FrontendRequest.SetVringErr)
        {
            if (payload.Length > 0) _announced = Math.Max(_announced, payload[0] + 1);
            return null;
        }
        if (_announced == 0) return null;
        _checked = true;
        int wanted = deviceQueues + vectors;
        if (_announced >= deviceQueues) return null;
        string names = deviceQueues switch
        {
            1 => "the controlq",
            2 => "the controlq and the eventq",
            _ => $"{deviceQueues} queues",
        };
        string missing = _announced == 1 && deviceQueues == 2 ? "the eventq (queue 1) is missing" : $"queues {_announced}..{deviceQueues - 1} are missing";
        return $"the frontend set up {_announced} queue(s), but the device has {names}{(vectors > 0 ? $" plus {vectors} vector queue(s)" : "")}: "
            + $"{missing}, and the guest driver will fail to find it. Likely cause: QEMU's num_vqs is too small; start it with num_vqs={wanted} "
            + "on the vhost-user-test-device-pci of this socket (or remove [device.events] kind = \"vq\" from the device)";
    }
}
