/*
 * cluster_room.cu: how many thread-block clusters of C CTAs can run at once with every CTA on an
 * SM of its own, per device, asked of the driver once.
 *
 * A cluster's CTAs must all sit in one GPC (the group of SMs that shares the cluster's network),
 * and a die's GPCs differ in size (units are disabled for yield, so two cards of one model can
 * differ), so the answer is the sum over GPCs of floor(SMs in it / C), not SMs / C. Kernels that
 * spread a head over a cluster and want each CTA alone on its SM (the decode layer's narrow tile,
 * decode_layer_select.c) ask this before choosing C: past the room, some SMs carry two CTAs and
 * the call waits for them.
 *
 * The driver's cluster occupancy (cudaOccupancyMaxActiveClusters) answers it for a kernel whose
 * CTAs cannot share an SM: an empty probe kernel launched, in the question only, with more than
 * half an SM's shared memory per CTA.
 */
#include <pthread.h>

#include "cuda_internal.h"

static __global__ void cluster_room_probe(void) {}

static int room[FKDA_MAX_CUDA_DEVICES][4]; /* [device][log2 C], C = 2, 4, 8; 0 not known */
static int room_asked[FKDA_MAX_CUDA_DEVICES];
static pthread_mutex_t room_lock = PTHREAD_MUTEX_INITIALIZER;

/* The driver's answer for clusters of C on the current device, or 0 where it gives none (no
 * clusters before sm_90, an error: cleared, so that no later check sees it). */
static int ask_driver(int C, const cudaDeviceProp *prop)
{
    const size_t smem = prop->sharedMemPerMultiprocessor / 2 + 1024; /* two would not fit */
    if (smem > prop->sharedMemPerBlockOptin ||
        cudaFuncSetAttribute((const void *)cluster_room_probe, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)smem) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)C, 1, 1);
    cfg.blockDim = dim3(128, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = (unsigned)C;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int n = 0;
    if (cudaOccupancyMaxActiveClusters(&n, (const void *)cluster_room_probe, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    /* An answer above SMs / C would mean CTAs sharing SMs after all: not the question's. */
    return n > 0 && (int64_t)n * C <= prop->multiProcessorCount ? n : 0;
}

extern "C" int fkda_cuda_cluster_room(int device, int C, cudaStream_t stream)
{
    const int lg = C == 2 ? 1 : C == 4 ? 2 : C == 8 ? 3 : 0;
    if (lg == 0 || device < 0 || device >= FKDA_MAX_CUDA_DEVICES) return 0;
    /* Once asked, every call reads the answer without the lock (a decode step is microseconds). */
    if (__atomic_load_n(&room_asked[device], __ATOMIC_ACQUIRE)) return room[device][lg];
    pthread_mutex_lock(&room_lock);
    if (!room_asked[device]) {
        /* Not while the stream is being captured into a graph: the attribute call and the query
         * are not stream work, and in a capture of global mode a call the capture does not allow
         * would invalidate the caller's graph. The caller's estimate serves that call; the next
         * call outside a capture asks. */
        cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
        const int can_ask = cudaStreamIsCapturing(stream, &capturing) == cudaSuccess &&
                            capturing == cudaStreamCaptureStatusNone;
        if (!can_ask) (void)cudaGetLastError();
        const cudaDeviceProp *prop = can_ask ? fkda_cuda_device_properties(device) : NULL;
        if (prop && prop->major >= 9) {
            for (int l = 1; l <= 3; l++) room[device][l] = ask_driver(1 << l, prop);
            __atomic_store_n(&room_asked[device], 1, __ATOMIC_RELEASE);
        } else if (prop) {
            __atomic_store_n(&room_asked[device], 1, __ATOMIC_RELEASE); /* no clusters: 0 */
        }
    }
    const int n = room[device][lg];
    pthread_mutex_unlock(&room_lock);
    return n;
}
