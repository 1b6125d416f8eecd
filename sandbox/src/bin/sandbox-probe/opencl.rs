//! An OpenCL kernel run the way an OpenCL worker runs one, through the ICD loader opened
//! with dlopen (so the probe builds without OpenCL): open the first device, build a
//! program, run it once to warm the driver up, and then (sandboxed) run packets with a
//! global offset.

use std::ffi::{c_void, CStr};

type ClInt = i32;
type Handle = *mut c_void;

const SOURCE: &CStr = c"__kernel void scale(__global float *a, float s) { size_t i = get_global_id(0); a[i - get_global_offset(0)] = a[i - get_global_offset(0)] * s + (float)i; }";
const CL_DEVICE_TYPE_ALL: u64 = 0xffff_ffff;
const CL_MEM_READ_WRITE: u64 = 1;
const CL_MEM_COPY_HOST_PTR: u64 = 1 << 5;

struct Api {
    get_platform_ids: unsafe extern "C" fn(u32, *mut Handle, *mut u32) -> ClInt,
    get_device_ids: unsafe extern "C" fn(Handle, u64, u32, *mut Handle, *mut u32) -> ClInt,
    create_context: unsafe extern "C" fn(
        *const isize,
        u32,
        *const Handle,
        *const c_void,
        *mut c_void,
        *mut ClInt,
    ) -> Handle,
    create_queue: unsafe extern "C" fn(Handle, Handle, u64, *mut ClInt) -> Handle,
    create_program:
        unsafe extern "C" fn(Handle, u32, *const *const i8, *const usize, *mut ClInt) -> Handle,
    build_program: unsafe extern "C" fn(
        Handle,
        u32,
        *const Handle,
        *const i8,
        *const c_void,
        *mut c_void,
    ) -> ClInt,
    create_kernel: unsafe extern "C" fn(Handle, *const i8, *mut ClInt) -> Handle,
    create_buffer: unsafe extern "C" fn(Handle, u64, usize, *mut c_void, *mut ClInt) -> Handle,
    set_arg: unsafe extern "C" fn(Handle, u32, usize, *const c_void) -> ClInt,
    enqueue: unsafe extern "C" fn(
        Handle,
        Handle,
        u32,
        *const usize,
        *const usize,
        *const usize,
        u32,
        *const c_void,
        *mut c_void,
    ) -> ClInt,
    read_buffer: unsafe extern "C" fn(
        Handle,
        Handle,
        u32,
        usize,
        usize,
        *mut c_void,
        u32,
        *const c_void,
        *mut c_void,
    ) -> ClInt,
    finish: unsafe extern "C" fn(Handle) -> ClInt,
    release_buffer: unsafe extern "C" fn(Handle) -> ClInt,
}

/// A device, a queue and a built kernel.
pub struct Runner {
    api: Api,
    context: Handle,
    queue: Handle,
    kernel: Handle,
    offset: usize,
}

fn symbol<T>(library: Handle, name: &CStr) -> Result<T, String> {
    // SAFETY: a valid handle and name.
    let address = unsafe { libc::dlsym(library, name.as_ptr()) };
    if address.is_null() {
        return Err(format!("libOpenCL lacks {name:?}"));
    }
    // SAFETY: `T` is the function pointer type of the OpenCL entry point `name`.
    Ok(unsafe { std::mem::transmute_copy::<Handle, T>(&address) })
}

fn check(what: &str, code: ClInt) -> Result<(), String> {
    if code == 0 {
        Ok(())
    } else {
        Err(format!("{what} failed with OpenCL error {code}"))
    }
}

impl Runner {
    /// Opens the first OpenCL device, builds the kernel and runs it once.
    pub fn open_and_warm_up() -> Result<Runner, String> {
        // SAFETY: dlopen of the ICD loader by its soname.
        let library = unsafe { libc::dlopen(c"libOpenCL.so.1".as_ptr(), libc::RTLD_NOW) };
        if library.is_null() {
            return Err("no OpenCL ICD loader (libOpenCL.so.1)".into());
        }
        let api = Api {
            get_platform_ids: symbol(library, c"clGetPlatformIDs")?,
            get_device_ids: symbol(library, c"clGetDeviceIDs")?,
            create_context: symbol(library, c"clCreateContext")?,
            create_queue: symbol(library, c"clCreateCommandQueue")?,
            create_program: symbol(library, c"clCreateProgramWithSource")?,
            build_program: symbol(library, c"clBuildProgram")?,
            create_kernel: symbol(library, c"clCreateKernel")?,
            create_buffer: symbol(library, c"clCreateBuffer")?,
            set_arg: symbol(library, c"clSetKernelArg")?,
            enqueue: symbol(library, c"clEnqueueNDRangeKernel")?,
            read_buffer: symbol(library, c"clEnqueueReadBuffer")?,
            finish: symbol(library, c"clFinish")?,
            release_buffer: symbol(library, c"clReleaseMemObject")?,
        };
        let mut platform: Handle = std::ptr::null_mut();
        let mut device: Handle = std::ptr::null_mut();
        let mut found = 0u32;
        let mut error: ClInt = 0;
        // SAFETY: OpenCL calls with valid out-pointers, in the order the API requires.
        unsafe {
            check(
                "clGetPlatformIDs",
                (api.get_platform_ids)(1, &mut platform, &mut found),
            )?;
            if found == 0 {
                return Err("no OpenCL platform".into());
            }
            check(
                "clGetDeviceIDs",
                (api.get_device_ids)(platform, CL_DEVICE_TYPE_ALL, 1, &mut device, &mut found),
            )?;
            let context = (api.create_context)(
                std::ptr::null(),
                1,
                &device,
                std::ptr::null(),
                std::ptr::null_mut(),
                &mut error,
            );
            check("clCreateContext", error)?;
            let queue = (api.create_queue)(context, device, 0, &mut error);
            check("clCreateCommandQueue", error)?;
            let source = SOURCE.as_ptr();
            let program = (api.create_program)(context, 1, &source, std::ptr::null(), &mut error);
            check("clCreateProgramWithSource", error)?;
            check(
                "clBuildProgram",
                (api.build_program)(
                    program,
                    1,
                    &device,
                    c"".as_ptr(),
                    std::ptr::null(),
                    std::ptr::null_mut(),
                ),
            )?;
            let kernel = (api.create_kernel)(program, c"scale".as_ptr(), &mut error);
            check("clCreateKernel", error)?;
            let mut runner = Runner {
                api,
                context,
                queue,
                kernel,
                offset: 0,
            };
            // The warm-up: the driver builds and loads its work-group function now,
            // while it may still run its linker and write its cache.
            runner.run(64, 2)?;
            Ok(runner)
        }
    }

    /// Runs the kernel on `items` items (at a global offset that changes from packet to
    /// packet, as a worker's packets do) and returns the sum of the results.
    pub fn run(&mut self, items: usize, scale: u32) -> Result<f64, String> {
        let items = items.max(1);
        let mut data = vec![1.0f32; items];
        let mut error: ClInt = 0;
        let factor = scale as f32;
        self.offset = (self.offset + 1000) % 100_000;
        let offset = self.offset;
        // SAFETY: OpenCL calls on live objects, with host pointers alive for each call
        // (the read is blocking).
        unsafe {
            let buffer = (self.api.create_buffer)(
                self.context,
                CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                items * 4,
                data.as_mut_ptr().cast(),
                &mut error,
            );
            check("clCreateBuffer", error)?;
            check(
                "clSetKernelArg",
                (self.api.set_arg)(
                    self.kernel,
                    0,
                    std::mem::size_of::<Handle>(),
                    (&buffer as *const Handle).cast(),
                ),
            )?;
            check(
                "clSetKernelArg",
                (self.api.set_arg)(self.kernel, 1, 4, (&factor as *const f32).cast()),
            )?;
            check(
                "clEnqueueNDRangeKernel",
                (self.api.enqueue)(
                    self.queue,
                    self.kernel,
                    1,
                    &offset,
                    &items,
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                ),
            )?;
            check(
                "clEnqueueReadBuffer",
                (self.api.read_buffer)(
                    self.queue,
                    buffer,
                    1,
                    0,
                    items * 4,
                    data.as_mut_ptr().cast(),
                    0,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                ),
            )?;
            check("clFinish", (self.api.finish)(self.queue))?;
            (self.api.release_buffer)(buffer);
        }
        // Item i holds scale + (offset + i): check the device computed that.
        let expected: f64 = (0..items)
            .map(|i| f64::from(factor) + (offset + i) as f64)
            .sum();
        let sum: f64 = data.iter().map(|&x| f64::from(x)).sum();
        if (sum - expected).abs() > expected.abs() * 1e-5 {
            return Err(format!("wrong results: sum {sum}, expected {expected}"));
        }
        Ok(sum)
    }
}
